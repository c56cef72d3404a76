//! Pure CRI log handling: `<RFC3339Nano> <stream> <P|F> <content>` lines
//! turned into what `kubectl logs` shows. No I/O here.

/// One reassembled log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Timestamp of the line's last chunk.
    pub timestamp: String,
    /// stdout or stderr.
    pub stream: String,
    /// Content, without the trailing newline.
    pub content: Vec<u8>,
    /// The line is complete (ends with F); an incomplete last line has no newline yet.
    pub complete: bool,
}

/// Parses CRI log text; partial (`P`) chunks are joined with the next chunk
/// of the same stream. Lines that are not CRI-formatted are kept verbatim.
/// Returns the complete lines and the bytes of a trailing incomplete
/// physical line (to be parsed again with more data).
pub fn parse(data: &[u8]) -> (Vec<LogLine>, usize) {
    let mut out: Vec<LogLine> = Vec::new();
    let mut partial: Option<LogLine> = None;
    let mut consumed = 0;
    let mut rest = data;
    while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
        let line = &rest[..nl];
        rest = &rest[nl + 1..];
        let mut parts = line.splitn(4, |b| *b == b' ');
        let ts = parts.next().unwrap_or_default();
        let stream = parts.next().unwrap_or_default();
        let tag = parts.next().unwrap_or_default();
        let content = parts.next().unwrap_or_default();
        let is_cri = matches!(tag, b"P" | b"F") && matches!(stream, b"stdout" | b"stderr");
        if !is_cri {
            out.push(LogLine {
                timestamp: String::new(),
                stream: "stdout".into(),
                content: line.to_vec(),
                complete: true,
            });
            consumed = data.len() - rest.len();
            continue;
        }
        let ts = String::from_utf8_lossy(ts).into_owned();
        let stream = String::from_utf8_lossy(stream).into_owned();
        let mut cur = match partial.take() {
            Some(mut p) if p.stream == stream => {
                p.content.extend_from_slice(content);
                p.timestamp = ts;
                p
            }
            other => {
                if let Some(p) = other {
                    out.push(LogLine {
                        complete: false,
                        ..p
                    });
                }
                LogLine {
                    timestamp: ts,
                    stream,
                    content: content.to_vec(),
                    complete: true,
                }
            }
        };
        if tag == b"P" {
            cur.complete = false;
            partial = Some(cur);
        } else {
            cur.complete = true;
            out.push(cur);
            consumed = data.len() - rest.len();
        }
    }
    (out, consumed)
}

/// Renders lines as `kubectl logs` prints them.
pub fn render(lines: &[LogLine], timestamps: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        if timestamps && !l.timestamp.is_empty() {
            out.extend_from_slice(l.timestamp.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&l.content);
        out.push(b'\n');
    }
    out
}

/// The last `n` lines.
pub fn tail(lines: Vec<LogLine>, n: Option<usize>) -> Vec<LogLine> {
    match n {
        Some(n) if n < lines.len() => lines[lines.len() - n..].to_vec(),
        _ => lines,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2024-01-02T03:04:05.000000001Z stdout F hello\n\
2024-01-02T03:04:05.1Z stderr P par\n\
2024-01-02T03:04:05.2Z stderr F tial\n\
2024-01-02T03:04:06Z stdout F \n\
2024-01-02T03:04:07Z stdout P incompl";

    #[test]
    fn parses_and_renders() {
        let (lines, consumed) = parse(LOG.as_bytes());
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1].content, b"partial");
        assert_eq!(lines[1].timestamp, "2024-01-02T03:04:05.2Z");
        assert_eq!(lines[2].content, b"");
        assert_eq!(
            &LOG.as_bytes()[consumed..],
            b"2024-01-02T03:04:07Z stdout P incompl"
        );
        assert_eq!(render(&lines, false), b"hello\npartial\n\n");
        assert_eq!(
            String::from_utf8(render(&lines[..1], true)).unwrap(),
            "2024-01-02T03:04:05.000000001Z hello\n"
        );
        let t = tail(lines, Some(2));
        assert_eq!(t[0].content, b"partial");
    }

    #[test]
    fn unfinished_partial_waits_for_more() {
        let (lines, consumed) = parse(b"T stdout P abc\n");
        assert!(lines.is_empty());
        assert_eq!(consumed, 0);
        let (lines, _) = parse(b"T stdout P abc\nT2 stdout F def\n");
        assert_eq!(lines[0].content, b"abcdef");
        let (lines, _) = parse(b"not cri\n");
        assert_eq!(lines[0].content, b"not cri");
    }
}
