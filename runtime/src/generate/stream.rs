//! Token ids to text as they arrive, for streaming output.
//!
//! A byte-level BPE token can end in the middle of a UTF-8 character (an
//! emoji is often two or three tokens), and decoding ids one at a time would
//! print broken characters. [`TextStream`] decodes the whole sequence so far
//! and hands out only what was not handed out before; while the text ends in
//! U+FFFD (the decoder's stand-in for an incomplete character) it waits for
//! the next token. Special tokens are skipped.

use super::GenerateError;
use crate::data::Tokenizer;

/// The text of a growing sequence of ids, handed out piece by piece.
#[derive(Debug, Default)]
pub struct TextStream {
    /// Every id pushed so far.
    ids: Vec<u32>,
    /// The decoded text already handed out.
    emitted: String,
}

impl TextStream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id`; returns the new text that is complete (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String, GenerateError> {
        self.ids.push(id);
        let text = tok
            .decode(&self.ids, true)
            .map_err(|message| GenerateError::Decode { id, message })?;
        if text.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        Ok(self.take(&text))
    }

    /// The rest of the text at the end (an incomplete last character as U+FFFD).
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String, GenerateError> {
        let text = tok
            .decode(&self.ids, true)
            .map_err(|message| GenerateError::Decode { id: 0, message })?;
        Ok(self.take(&text))
    }

    /// What of `text` has not been handed out. Decoding a longer sequence
    /// normally extends the shorter one's text; if a decoder ever rewrote
    /// what came before, only the part after the common prefix is new.
    fn take(&mut self, text: &str) -> String {
        let common = text
            .char_indices()
            .zip(self.emitted.chars())
            .find(|((_, a), b)| a != b)
            .map_or_else(|| text.len().min(self.emitted.len()), |((i, _), _)| i);
        let new = text.get(common..).unwrap_or_default().to_string();
        self.emitted = text.to_string();
        new
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn multibyte_characters_are_never_split() {
        // byte-level ids: "é" is 0xC3 0xA9, "🙂" four bytes
        let tok = Tokenizer::bytes();
        let text = "aé🙂b";
        let mut s = TextStream::new();
        let mut pieces = Vec::new();
        for b in text.bytes() {
            pieces.push(s.push(&tok, u32::from(b)).unwrap());
        }
        assert_eq!(pieces, ["a", "", "é", "", "", "", "🙂", "b"]);
        assert_eq!(s.finish(&tok).unwrap(), "");
        // an incomplete character at the end comes out as U+FFFD
        let mut s = TextStream::new();
        assert_eq!(s.push(&tok, 0xF0).unwrap(), "");
        assert_eq!(s.finish(&tok).unwrap(), "\u{FFFD}");
    }
}
