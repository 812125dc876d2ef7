//! PNG and JPEG files of an image folder.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_mim::data::folder::decode;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("tessera-fuzz-image-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    for name in ["x.png", "x.jpg"] {
        let p = dir.join(name);
        if std::fs::write(&p, data).is_ok() {
            let _ = decode(&p);
        }
    }
});
