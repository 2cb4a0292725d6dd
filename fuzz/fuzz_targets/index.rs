#![no_main]

use std::sync::OnceLock;

use coffer::MasterKey;
use libfuzzer_sys::fuzz_target;

static KEY: OnceLock<MasterKey> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let key = KEY.get_or_init(coffer::fuzzing::fuzz_key);
    coffer::fuzzing::index(key, data);
});
