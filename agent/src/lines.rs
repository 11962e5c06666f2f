//! Bounded line reading for inputs we do not control: the driver app, barcode scanners.
//!
//! A line longer than the bound is reported once as [`Line::TooLong`] and skipped up to its
//! newline, so one bad request neither exhausts memory nor ends the connection.

use tokio::io::{AsyncBufRead, AsyncBufReadExt as _};

/// One line read by [`read_line`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its `\n` (a trailing `\r` is kept; callers trim).
    Text(Vec<u8>),
    /// A line longer than the bound; its bytes were discarded.
    TooLong,
}

/// Reads the next line of at most `max` bytes. Returns `None` at the end of input. A last
/// line without a newline is returned as a line.
pub async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, max: usize) -> std::io::Result<Option<Line>> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (too_long, line.is_empty()) {
                (true, _) => Some(Line::TooLong),
                (false, true) => None,
                (false, false) => Some(Line::Text(line)),
            });
        }
        let (chunk, used, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], i + 1, true),
            None => (available, available.len(), false),
        };
        if !too_long {
            if line.len() + chunk.len() > max {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        reader.consume(used);
        if done {
            return Ok(Some(if too_long { Line::TooLong } else { Line::Text(line) }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn oversized_lines_are_skipped_and_reading_goes_on() {
        let input = [b"short\r\n".as_slice(), &[b'x'; 100], b"\nlast"].concat();
        let mut reader = tokio::io::BufReader::with_capacity(16, std::io::Cursor::new(input));
        assert_eq!(read_line(&mut reader, 20).await.expect("io"), Some(Line::Text(b"short\r".to_vec())));
        assert_eq!(read_line(&mut reader, 20).await.expect("io"), Some(Line::TooLong));
        assert_eq!(read_line(&mut reader, 20).await.expect("io"), Some(Line::Text(b"last".to_vec())));
        assert_eq!(read_line(&mut reader, 20).await.expect("io"), None);
    }
}
