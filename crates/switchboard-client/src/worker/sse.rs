//! A server-sent events parser (the WHATWG framing, as docs/PROTOCOL.md §9.8 uses it).
//!
//! Lines end with LF or CRLF; a blank line ends a frame; `event:`, `id:` and `data:` are
//! the fields that matter, several `data:` lines are joined with `\n`, one space after the
//! colon is dropped, and lines starting with `:` are comments. Comments are reported too,
//! because any frame, a keep-alive comment included, proves the stream alive.
//!
//! The parser holds at most `max_buffered` bytes of a frame that has not ended yet; a
//! larger one is an error, after which the caller drops the connection, as the official
//! SSETransport does with its 1 MiB cap.

/// One dispatched frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Frame {
    /// The `event:` field, if the frame had one.
    pub(crate) event: Option<String>,
    /// The `id:` field, if the frame had one.
    pub(crate) id: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub(crate) data: String,
}

/// What one chunk of the stream contained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    /// A complete frame with data.
    Frame(Frame),
    /// A comment line (`: keepalive`).
    Comment,
}

/// A frame grew beyond the limit before it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooLarge {
    /// The limit that was exceeded.
    pub(crate) limit: usize,
}

/// Incremental SSE parser; feed it chunks as they arrive.
#[derive(Debug)]
pub(crate) struct Parser {
    /// The bytes of a line whose end has not arrived yet.
    partial: Vec<u8>,
    event: Option<String>,
    id: Option<String>,
    data: Option<String>,
    /// Bytes of the complete lines of the current, unfinished frame.
    frame_bytes: usize,
    max_buffered: usize,
}

impl Parser {
    /// A parser that refuses frames larger than `max_buffered` bytes.
    pub(crate) fn new(max_buffered: usize) -> Self {
        Self {
            partial: Vec::new(),
            event: None,
            id: None,
            data: None,
            frame_bytes: 0,
            max_buffered,
        }
    }

    /// Adds a chunk and returns every frame and comment it completed, in order.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<Vec<Item>, TooLarge> {
        let mut items = Vec::new();
        let mut rest = chunk;
        while let Some(at) = rest.iter().position(|&b| b == b'\n') {
            let (head, tail) = rest.split_at(at);
            rest = &tail[1..];
            let line = if self.partial.is_empty() {
                head.to_vec()
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(head);
                line
            };
            if let Some(item) = self.line(&line) {
                items.push(item);
            }
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() + self.frame_bytes > self.max_buffered {
            return Err(TooLarge {
                limit: self.max_buffered,
            });
        }
        Ok(items)
    }

    fn line(&mut self, line: &[u8]) -> Option<Item> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(b":") {
            return Some(Item::Comment);
        }
        self.frame_bytes += line.len() + 1;
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text.as_ref(), ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            // The standard ignores ids with a NUL, so that they cannot truncate a header.
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            // `retry:` and unknown fields carry nothing the worker uses.
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<Item> {
        self.frame_bytes = 0;
        let event = self.event.take();
        let id = self.id.take();
        // As in the standard, a frame without data is not dispatched.
        let data = self.data.take()?;
        Some(Item::Frame(Frame { event, id, data }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(event: Option<&str>, id: Option<&str>, data: &str) -> Item {
        Item::Frame(Frame {
            event: event.map(str::to_owned),
            id: id.map(str::to_owned),
            data: data.to_owned(),
        })
    }

    #[test]
    fn frames_end_at_a_blank_line_with_lf_or_crlf() -> Result<(), TooLarge> {
        let mut parser = Parser::new(1024);

        let items = parser.push(
            b"event: client_event\nid: 1\ndata: {\"a\":1}\n\nevent: client_event\r\nid: 2\r\ndata: {\"b\":2}\r\n\r\n",
        )?;

        assert_eq!(
            items,
            vec![
                frame(Some("client_event"), Some("1"), "{\"a\":1}"),
                frame(Some("client_event"), Some("2"), "{\"b\":2}"),
            ]
        );
        Ok(())
    }

    #[test]
    fn data_lines_are_joined_with_newlines() -> Result<(), TooLarge> {
        let mut parser = Parser::new(1024);

        let items = parser.push(b"data: first\ndata:second\ndata:  third\ndata\n\n")?;

        assert_eq!(items, vec![frame(None, None, "first\nsecond\n third\n")]);
        Ok(())
    }

    #[test]
    fn comments_are_reported_and_do_not_disturb_a_frame() -> Result<(), TooLarge> {
        let mut parser = Parser::new(1024);

        let items = parser.push(b": keepalive\n\nevent: x\n:inside\ndata: d\n\n")?;

        assert_eq!(
            items,
            vec![Item::Comment, Item::Comment, frame(Some("x"), None, "d")]
        );
        Ok(())
    }

    #[test]
    fn chunks_may_split_lines_anywhere_including_inside_crlf() -> Result<(), TooLarge> {
        let mut parser = Parser::new(1024);
        let stream = b"event: client_event\r\nid: 17\r\ndata: {\"x\":\"y\"}\r\n\r\n";
        let mut items = Vec::new();

        for byte in stream.chunks(1) {
            items.extend(parser.push(byte)?);
        }

        assert_eq!(
            items,
            vec![frame(Some("client_event"), Some("17"), "{\"x\":\"y\"}")]
        );
        Ok(())
    }

    #[test]
    fn frames_without_data_are_not_dispatched() -> Result<(), TooLarge> {
        let mut parser = Parser::new(1024);

        let items = parser.push(b"event: client_event\nid: 3\n\n\n")?;

        assert!(items.is_empty());
        Ok(())
    }

    #[test]
    fn an_oversized_unfinished_frame_is_an_error() -> Result<(), TooLarge> {
        let mut parser = Parser::new(64);
        parser.push(b"data: short\n\n")?;

        let long_line = parser.push(&[b'a'; 100]);
        let mut many_lines = Parser::new(64);
        let mut result = Ok(Vec::new());
        for _ in 0..10 {
            result = many_lines.push(b"data: 0123456789\n");
            if result.is_err() {
                break;
            }
        }

        assert_eq!(long_line, Err(TooLarge { limit: 64 }));
        assert_eq!(result, Err(TooLarge { limit: 64 }));
        Ok(())
    }
}
