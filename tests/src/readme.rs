//! README.md's code blocks, for the test that runs them as written
//! (`tests/tests/newcomer.rs`) and for `build.rs`, which compiles the Rust
//! ones into the `hreg-readme` binary. Plain std: `build.rs` includes this
//! file as a module of its own.

/// A fenced code block: its language (the word after the fence), the line
/// of README.md its code starts on (1-based), and the code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub lang: String,
    pub line: usize,
    pub code: String,
    /// The `## ` heading the block is under ("" before the first).
    pub section: String,
}

/// Every fenced block of `text` (fences start a line: "```lang" ... "```").
pub fn blocks(text: &str) -> Vec<Block> {
    let mut found = Vec::new();
    let mut open: Option<Block> = None;
    let mut section = String::new();
    for (index, line) in text.lines().enumerate() {
        match open.as_mut() {
            Some(block) if line.trim_end() == "```" => {
                found.push(block.clone());
                open = None;
            }
            Some(block) => {
                block.code.push_str(line);
                block.code.push('\n');
            }
            None => {
                if let Some(heading) = line.strip_prefix("## ") {
                    section = heading.trim().to_owned();
                } else if let Some(lang) = line.strip_prefix("```") {
                    open = Some(Block {
                        lang: lang.trim().to_owned(),
                        line: index + 2,
                        code: String::new(),
                        section: section.clone(),
                    });
                }
            }
        }
    }
    assert!(open.is_none(), "README.md: a code block is never closed");
    found
}

/// One command of a `console` block: the text after `$ ` and the lines
/// printed after it, as README.md shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub command: String,
    pub expected: Vec<String>,
}

/// The commands of a `console` block with what each prints.
pub fn console_steps(code: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for line in code.lines() {
        match line.strip_prefix("$ ") {
            Some(command) => steps.push(Step {
                command: command.to_owned(),
                expected: Vec::new(),
            }),
            None => steps
                .last_mut()
                .expect("a console block starts with a `$ ` command")
                .expected
                .push(line.to_owned()),
        }
    }
    steps
}

/// Whether `actual` is what `expected` shows, where `...` in `expected`
/// stands for any text (a handle, a uid, a version) within one line.
pub fn matches(expected: &str, actual: &str) -> bool {
    let expected: Vec<&str> = expected.lines().collect();
    let actual: Vec<&str> = actual.lines().collect();
    expected.len() == actual.len()
        && expected
            .iter()
            .zip(&actual)
            .all(|(e, a)| line_matches(e, a))
}

fn line_matches(expected: &str, actual: &str) -> bool {
    let mut parts = expected.split("...");
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = actual.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// Text with every run of white space made one space (README paragraphs
/// are wrapped, help texts are not).
pub fn one_spaced(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_know_their_language_line_and_section() {
        let text = "intro\n```sh\nls\n```\n## Two\n\n```console\n$ echo hi\nhi\n```\n";
        let found = blocks(text);
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].lang.as_str(), found[0].line), ("sh", 3));
        assert_eq!(found[0].section, "");
        assert_eq!(found[1].section, "Two");
        let steps = console_steps(&found[1].code);
        assert_eq!(
            steps,
            [Step {
                command: "echo hi".into(),
                expected: vec!["hi".into()]
            }]
        );
    }

    #[test]
    fn dots_stand_for_any_text_within_a_line() {
        assert!(matches("handle ...: gone", "handle 123: gone"));
        assert!(matches("a...b...c", "a1b2c"));
        assert!(matches("...", "anything"));
        assert!(matches("x", "x"));
        assert!(!matches("x", "xy"));
        assert!(!matches("handle ...: gone", "handle 123: here"));
        assert!(!matches("one\ntwo", "one"));
        assert!(!matches("a...b", "a\nb"));
    }
}
