//! CLIP's text tokenizer: OpenAI's `simple_tokenizer.py` (as copied into open_clip's `tokenizer.py`),
//! ported to Rust. It owns the BPE vocabulary file and turns prompts into the 77 token ids the text
//! tower reads.
//!
//! The steps, in the reference's order: clean (a subset of `ftfy.fix_text`, `html.unescape` twice,
//! strip), whitespace cleanup (`" ".join(text.split())`), lower case, split with the pattern
//! `<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
//! (case-insensitive), map each piece's UTF-8 bytes to printable characters (`bytes_to_unicode`),
//! mark the word end with `</w>`, and merge pairs by rank until no ranked pair is left. The ids are
//! wrapped in start-of-text (49406) and end-of-text (49407), truncated to the context keeping the
//! end-of-text last, and padded with 0.
//!
//! Exact against open_clip's tokenizer (checked by `tools/clip/reference.py --check-open-clip`) for
//! text that `ftfy.fix_text` would leave alone apart from curly quotes and Latin ligatures, which are
//! reproduced here. Not reproduced: ftfy's mojibake repair, character-width and NFC normalisation,
//! and HTML entities other than `&amp; &lt; &gt; &quot; &apos; &nbsp;` and numeric ones.
//! Prompts are plain language written by an operator, so this is a documented boundary, not a gap in
//! practice.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Start-of-text id (`<start_of_text>`, the 49407th entry of the vocabulary).
pub const SOT: u32 = 49406;
/// End-of-text id; the text tower pools at its position (the largest id in every row).
pub const EOT: u32 = 49407;
/// Context length of every CLIP text tower we load.
pub const CONTEXT: usize = 77;
/// Entries in the vocabulary: 256 bytes, 256 bytes with `</w>`, the merges, the two specials.
pub const VOCAB_SIZE: usize = 49408;
/// Merges the reference reads from the file: `merges[1 : 49152 - 256 - 2 + 1]`.
const N_MERGES: usize = 49152 - 256 - 2;
const SPECIALS: [&str; 2] = ["<start_of_text>", "<end_of_text>"];
const PATTERN: &str =
    r"(?i)<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(
        "cannot read the CLIP vocabulary {path}: {reason} (tools/clip/fetch_vocab.sh fetches it)"
    )]
    Read { path: PathBuf, reason: String },
    #[error("{path} is not CLIP's BPE vocabulary (bpe_simple_vocab_16e6.txt.gz): {reason}")]
    Format { path: PathBuf, reason: String },
}

/// The BPE tokenizer. Immutable after loading, so one instance serves every thread.
pub struct ClipTokenizer {
    /// Token string -> id, as the reference's `encoder` (used for the word-initial symbols).
    encoder: HashMap<String, u32>,
    /// (left id, right id) -> (rank, merged id): the merge table over ids, so that a word is a
    /// `Vec<u32>` and merging never builds strings.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// `bytes_to_unicode`: each byte's printable stand-in.
    byte_char: [char; 256],
    /// Entries in the vocabulary (ids are below it): the text tower's embedding must have as many rows.
    n_tokens: usize,
    pattern: regex::Regex,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab", &self.encoder.len())
            .finish()
    }
}

/// `bytes_to_unicode` of the reference: printable Latin-1 bytes map to themselves, the others to
/// 256 + n in byte order.
fn bytes_to_unicode() -> [char; 256] {
    let mut out = ['\0'; 256];
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut n = 0u32;
    for b in 0..256u32 {
        let c = if printable(b) {
            b
        } else {
            n += 1;
            255 + n
        };
        out[b as usize] = char::from_u32(c).expect("code points below 512 are valid");
    }
    out
}

impl ClipTokenizer {
    /// Reads `bpe_simple_vocab_16e6.txt.gz` (gzip; a plain-text copy is accepted too).
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        let raw = std::fs::read(path).map_err(|e| TokenizerError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let text = if raw.starts_with(&[0x1f, 0x8b]) {
            let mut s = String::new();
            flate2::read::GzDecoder::new(raw.as_slice())
                .read_to_string(&mut s)
                .map_err(|e| TokenizerError::Format {
                    path: path.to_path_buf(),
                    reason: format!("gzip or UTF-8 error: {e}"),
                })?;
            s
        } else {
            String::from_utf8(raw).map_err(|e| TokenizerError::Format {
                path: path.to_path_buf(),
                reason: format!("not UTF-8: {e}"),
            })?
        };
        Self::from_merges_text(&text, N_MERGES).map_err(|reason| TokenizerError::Format {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Builds the tokenizer from the vocabulary's text: a header line, then one merge `a b` a line,
    /// of which the first `n_merges` are used (the reference's slice). Smaller `n_merges` serve
    /// unit tests with hand-written merge lists.
    pub fn from_merges_text(text: &str, n_merges: usize) -> Result<Self, String> {
        let lines: Vec<&str> = text.split('\n').collect();
        if lines.len() < n_merges + 1 {
            return Err(format!(
                "{} merge lines, expected at least {n_merges}",
                lines.len().saturating_sub(1)
            ));
        }
        let byte_char = bytes_to_unicode();
        // The reference lists `bytes_to_unicode().values()` in its dict's insertion order: the
        // printable bytes first, then the others (which is also code point order).
        let mut chars: Vec<char> = byte_char.to_vec();
        chars.sort_by_key(|&c| (c as u32) >= 256);
        let mut vocab: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
        vocab.extend(chars.iter().map(|c| format!("{c}</w>")));
        let mut pairs = Vec::with_capacity(n_merges);
        for (i, line) in lines[1..=n_merges].iter().enumerate() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() != 2 {
                return Err(format!(
                    "line {}: expected a merge `left right`, found {line:?}",
                    i + 2
                ));
            }
            vocab.push(format!("{}{}", parts[0], parts[1]));
            pairs.push((parts[0], parts[1]));
        }
        vocab.extend(SPECIALS.iter().map(|s| s.to_string()));
        // As Python's dict(zip(vocab, range)): a repeated string keeps its last id.
        let mut encoder = HashMap::with_capacity(vocab.len());
        for (id, tok) in vocab.iter().enumerate() {
            encoder.insert(tok.clone(), id as u32);
        }
        if n_merges == N_MERGES
            && (encoder.get(SPECIALS[0]) != Some(&SOT) || encoder.get(SPECIALS[1]) != Some(&EOT))
        {
            return Err("the special tokens do not get ids 49406 and 49407".into());
        }
        let mut merges = HashMap::with_capacity(pairs.len());
        for (rank, (a, b)) in pairs.iter().enumerate() {
            let id = |s: &str| {
                encoder.get(s).copied().ok_or_else(|| {
                    format!(
                        "line {}: merge part {s:?} is not a token of the vocabulary",
                        rank + 2
                    )
                })
            };
            let key = (id(a)?, id(b)?);
            let merged = id(&format!("{a}{b}"))?;
            // Python's dict(zip(merges, range)) keeps the last rank of a repeated pair.
            merges.insert(key, (rank as u32, merged));
        }
        let pattern = regex::Regex::new(PATTERN).map_err(|e| e.to_string())?;
        Ok(Self {
            n_tokens: vocab.len(),
            encoder,
            merges,
            byte_char,
            pattern,
        })
    }

    /// Entries in the vocabulary (49408 for CLIP's file); every id is below it.
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// The BPE ids of `text`, without start/end tokens and without truncation.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let text = clean(text);
        let mut ids = Vec::new();
        for piece in self.pattern.find_iter(&text) {
            let piece = piece.as_str();
            if let Some(&id) = SPECIALS
                .iter()
                .find(|s| **s == piece)
                .and_then(|s| self.encoder.get(*s))
            {
                ids.push(id);
                continue;
            }
            self.bpe(piece, &mut ids);
        }
        ids
    }

    /// `[SOT] + encode(text) + [EOT]`, cut to `context` with EOT kept last, padded with 0: one row
    /// of the text tower's input.
    pub fn tokenize(&self, text: &str, context: usize) -> Vec<u32> {
        let mut ids = Vec::with_capacity(context);
        ids.push(SOT);
        ids.extend(self.encode(text));
        ids.push(EOT);
        if ids.len() > context {
            ids.truncate(context);
            if let Some(last) = ids.last_mut() {
                *last = EOT;
            }
        }
        ids.resize(context, 0);
        ids
    }

    /// Merges one pre-token and appends its ids.
    fn bpe(&self, piece: &str, out: &mut Vec<u32>) {
        let chars: Vec<char> = piece.bytes().map(|b| self.byte_char[b as usize]).collect();
        let n = chars.len();
        if n == 0 {
            return;
        }
        // Every single byte character and its `</w>` form are in the vocabulary by construction.
        let mut word: Vec<u32> = chars
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let s = if i + 1 == n {
                    format!("{c}</w>")
                } else {
                    c.to_string()
                };
                self.encoder[&s]
            })
            .collect();
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|w| {
                    self.merges
                        .get(&(w[0], w[1]))
                        .map(|&(r, m)| (r, w[0], w[1], m))
                })
                .min_by_key(|&(r, ..)| r);
            let Some((_, a, b, merged)) = best else { break };
            let mut next = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == a && word[i + 1] == b {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(word[i]);
                    i += 1;
                }
            }
            word = next;
        }
        out.extend(word);
    }
}

/// Python's `str.isspace` (Unicode White_Space plus the ASCII separators 0x1c..=0x1f), which
/// `str.split()` and `str.strip()` use.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The reference's `_clean_lower`: ftfy subset, `html.unescape` twice, whitespace cleanup, lower.
pub fn clean(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{2018}'..='\u{201b}' => s.push('\''),
            '\u{201c}'..='\u{201f}' => s.push('"'),
            '\u{fb00}' => s.push_str("ff"),
            '\u{fb01}' => s.push_str("fi"),
            '\u{fb02}' => s.push_str("fl"),
            '\u{fb03}' => s.push_str("ffi"),
            '\u{fb04}' => s.push_str("ffl"),
            '\u{fb05}' => s.push_str("\u{17f}t"),
            '\u{fb06}' => s.push_str("st"),
            c => s.push(c),
        }
    }
    let s = html_unescape(&html_unescape(&s));
    let words: Vec<&str> = s.split(py_isspace).filter(|w| !w.is_empty()).collect();
    words.join(" ").to_lowercase()
}

/// The common part of Python's `html.unescape`: five named entities, `&nbsp;`, and numeric
/// references (invalid or NUL code points become U+FFFD, as Python does).
fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        rest = &rest[pos..];
        let decoded = rest.find(';').filter(|&end| end <= 12).and_then(|end| {
            let name = &rest[1..end];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ => {
                    let num = if let Some(h) =
                        name.strip_prefix("#x").or_else(|| name.strip_prefix("#X"))
                    {
                        u32::from_str_radix(h, 16).ok()
                    } else if let Some(d) = name.strip_prefix('#') {
                        d.parse::<u32>().ok()
                    } else {
                        None
                    };
                    num.map(|n| {
                        char::from_u32(n)
                            .filter(|&c| c != '\0')
                            .unwrap_or('\u{fffd}')
                    })
                }
            };
            c.map(|c| (c, end + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny vocabulary: merges over "l o w e r" so that the merge order matters.
    fn tiny() -> ClipTokenizer {
        let text = "#version: 0.2\nl o\nlo w</w>\ne r</w>\nlo w\nlow er</w>\n";
        ClipTokenizer::from_merges_text(text, 5).unwrap()
    }

    #[test]
    fn bytes_to_unicode_matches_the_reference_table() {
        let t = bytes_to_unicode();
        assert_eq!(t[b'!' as usize], '!');
        assert_eq!(t[0], '\u{100}');
        assert_eq!(t[b' ' as usize], '\u{120}');
        assert_eq!(t[173], '\u{143}');
        let mut sorted: Vec<char> = t.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
    }

    #[test]
    fn merges_apply_by_rank_and_mark_word_ends() {
        let t = tiny();
        let id = |s: &str| t.encoder[s];
        // The first 512 ids do not depend on the merges: printable bytes first, as the reference.
        assert_eq!((id("!"), id("a</w>"), id("\u{100}")), (0, 320, 188));
        assert_eq!(t.encode("low"), vec![id("low</w>")]);
        assert_eq!(t.encode("LOWER"), vec![id("lower</w>")]);
        // "lo" merges first (rank 0) everywhere, then "low" inside the word.
        assert_eq!(t.encode("lolo"), vec![id("lo"), id("l"), id("o</w>")]);
        assert_eq!(t.encode("x"), vec![id("x</w>")]);
    }

    #[test]
    fn cleaning_follows_the_reference() {
        assert_eq!(clean("  A\t\nB \u{1c} c  "), "a b c");
        assert_eq!(clean("Don\u{2019}t \u{fb01}x"), "don't fix");
        assert_eq!(clean("&amp;lt;b&amp;gt; &#65;&#x42; & x"), "<b> ab & x");
        assert_eq!(clean("&bogus; &#0;"), "&bogus; \u{fffd}");
    }

    #[test]
    fn tokenize_truncates_keeping_end_of_text_and_pads() {
        let t = tiny();
        let ids = t.tokenize(&"low ".repeat(100), CONTEXT);
        assert_eq!(ids.len(), CONTEXT);
        assert_eq!(ids[0], SOT);
        assert_eq!(ids[CONTEXT - 1], EOT);
        let short = t.tokenize("low", CONTEXT);
        assert_eq!(&short[..3], &[SOT, t.encoder["low</w>"], EOT]);
        assert!(short[3..].iter().all(|&i| i == 0));
    }

    #[test]
    fn malformed_vocabularies_are_refused() {
        assert!(ClipTokenizer::from_merges_text("#v\nl o\n", 5).is_err());
        let e = ClipTokenizer::from_merges_text("#v\nl o p\n", 1).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = ClipTokenizer::from_merges_text("#v\nlo w\n", 1).unwrap_err();
        assert!(e.contains("\"lo\""), "{e}");
    }
}
