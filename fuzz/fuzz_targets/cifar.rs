//! CIFAR-10 binary batches.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_mim::data::cifar::read_batch;

fuzz_target!(|data: &[u8]| {
    let p = std::env::temp_dir().join(format!("tessera-fuzz-cifar-{}.bin", std::process::id()));
    if std::fs::write(&p, data).is_ok() {
        let _ = read_batch(&p, 10);
    }
});
