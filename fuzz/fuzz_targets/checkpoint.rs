//! Safetensors checkpoints (and mask files, which are read the same way).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_mim::io::safetensors::TensorFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = TensorFile::from_bytes(data, std::path::Path::new("fuzz.safetensors")) {
        for t in f.tensors.values() {
            assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
        }
    }
});
