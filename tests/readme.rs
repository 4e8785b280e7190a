//! The README reads clean on a code host: its Rust blocks carry no rustdoc-hidden lines
//! (`# ...`), so what a reader sees is the whole program — which `src/lib.rs` compiles
//! and runs as doctests (`ReadmeDoctests`).

/// The lines of every code block whose info string starts with `lang`.
fn blocks<'a>(text: &'a str, lang: &str) -> Vec<Vec<&'a str>> {
    let mut blocks = Vec::new();
    // Inside a block: `Some(lines)` for a `lang` block, `None` for another language.
    let mut inside: Option<Option<Vec<&str>>> = None;
    for line in text.lines() {
        match (inside.take(), line.trim_start().strip_prefix("```")) {
            (None, Some(info)) => inside = Some(info.starts_with(lang).then(Vec::new)),
            (None, None) => {}
            (Some(block), Some(_)) => blocks.extend(block),
            (Some(mut block), None) => {
                if let Some(b) = &mut block {
                    b.push(line);
                }
                inside = Some(block);
            }
        }
    }
    blocks
}

#[test]
fn the_readmes_rust_blocks_have_no_hidden_lines() {
    let readme = include_str!("../README.md");
    let rust = blocks(readme, "rust");
    assert!(rust.len() >= 6, "found {} rust blocks", rust.len());
    for block in &rust {
        for line in block {
            let t = line.trim_start();
            assert!(
                !(t == "#" || t.starts_with("# ")),
                "a rustdoc-hidden line in a README block: {line:?}\n{}",
                block.join("\n")
            );
        }
    }
    // Every compiled block is a whole program.
    for block in &rust {
        assert!(
            block.iter().any(|l| l.contains("fn main(")),
            "a README block without its main:\n{}",
            block.join("\n")
        );
    }
}
