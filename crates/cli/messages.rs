//! The library's messages in this binary's words: where a library error
//! names an option by the library's name (`` `RunOptions::resume` ``), the
//! user sees the flag that sets it (`--resume`).

/// The options the library names in its messages (`` `RunOptions::resume` ``),
/// by this binary's flags.
const FLAGS: [(&str, &str); 13] = [
    ("ModelHints::img_size", "--img-size"),
    ("RunOptions::resume", "--resume"),
    ("RunOptions::stop_after", "--stop-after"),
    ("RunOptions::overwrite", "--overwrite"),
    ("RunOptions::max_memory", "--max-memory"),
    ("Pictures::count", "--recon-count"),
    ("ModelHints::heads", "--heads"),
    ("ModelHints::decoder_heads", "--decoder-heads"),
    ("TrainConfig::batch_size", "--batch"),
    ("EncoderConfig::img_size", "--img-size"),
    ("VitConfig::embed_dim", "--dim"),
    ("VitConfig::depth", "--depth"),
    ("Method::SimMim", "--method simmim"),
];

/// A library message with its option names written as this binary's flags.
pub fn with_flags(message: &str) -> String {
    FLAGS.iter().fold(message.to_string(), |m, (name, flag)| {
        m.replace(&format!("`{name}`"), flag)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The library's option names in a message become this binary's flags.
    #[test]
    fn library_option_names_become_flags() {
        let m = "runs/x holds a run already: continue it with `RunOptions::resume`, or start over with \
                 `RunOptions::overwrite`; `Unknown::name` stays";
        assert_eq!(
            with_flags(m),
            "runs/x holds a run already: continue it with --resume, or start over with --overwrite; \
             `Unknown::name` stays"
        );
    }
}
