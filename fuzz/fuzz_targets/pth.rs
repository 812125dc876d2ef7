//! PyTorch .pth archives: the zip container and the restricted unpickler.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = tessera_mim::io::pth::read(data, std::path::Path::new("fuzz.pth")) {
        for t in tensors {
            assert_eq!(t.shape.iter().product::<usize>(), t.data.len());
        }
    }
});
