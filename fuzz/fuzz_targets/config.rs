//! Training configurations as JSON (a checkpoint's `tessera.config`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_mim::train::pretrain::TrainConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(cfg) = serde_json::from_str::<TrainConfig>(text)
    {
        let _ = cfg.validate();
    }
});
