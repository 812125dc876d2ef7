//! IDX image and label files, raw and gzipped (the loaders read paths).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_mim::data::idx::{read_images, read_labels};

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("tessera-fuzz-idx-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    for name in ["x-idx3-ubyte", "x-idx3-ubyte.gz"] {
        let p = dir.join(name);
        if std::fs::write(&p, data).is_ok() {
            let _ = read_images(&p);
            let _ = read_labels(&p, 10);
        }
    }
});
