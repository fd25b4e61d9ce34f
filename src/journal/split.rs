//! Cutting a byte stream into log lines, as journald cuts a service's stdout: at each `\n`,
//! and a line longer than `LineMax=` (48 KiB by default) into pieces of at most that length,
//! each but the last marked as continued. What is left at end of file is one last line.
//! Bytes are never changed: invalid UTF-8, NUL and `\r` stay as they came, so a line can be
//! read back exactly. A cut inside an overlong line moves back to the start of a UTF-8
//! sequence when there is one within the last 3 bytes, so a text line is never cut inside a
//! character.

/// journald's default `LineMax=`.
pub const LINE_MAX: usize = 48 * 1024;

/// The size a [`LineBuffer`] starts with.
pub const FIRST_SIZE: usize = 4096;

/// How a line ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnd {
    /// At a newline (not part of the line).
    Newline,
    /// Cut at the maximum length; the next line continues it.
    Split,
    /// At the end of the stream, without a newline.
    Eof,
}

/// A buffer that the reader fills and the relay drains line by line. It holds at most
/// `line_max` bytes of an unfinished line plus one read. It starts small ([`FIRST_SIZE`]) and
/// grows to that size only while the output needs it: a relay per stream of every running
/// container, most of them quiet, would otherwise cost berthd the whole size each.
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// The size it may grow to: `line_max` plus one read.
    cap: usize,
    /// Start of the bytes not yet handed out.
    start: usize,
    /// End of the bytes read.
    end: usize,
    /// Where the search for the next newline resumes (all of `start..scanned` is known to
    /// have none).
    scanned: usize,
    line_max: usize,
}

impl LineBuffer {
    /// A buffer for lines of at most `line_max` bytes (at least 1) read `chunk` bytes at a
    /// time.
    pub fn new(line_max: usize, chunk: usize) -> Self {
        let line_max = line_max.max(1);
        let cap = line_max + chunk.max(1);
        LineBuffer {
            buf: vec![0; cap.min(FIRST_SIZE)],
            cap,
            start: 0,
            end: 0,
            scanned: 0,
            line_max,
        }
    }

    /// Room to read into: the unfinished line is moved to the front first. Never empty, since
    /// [`LineBuffer::next_line`] hands out a line once `line_max` bytes wait without a newline.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.scanned -= self.start;
            self.start = 0;
        }
        // Less than half of it free: twice the size (a busy stream reaches the full size in a
        // few reads). So the room is never empty below the full size either.
        if self.buf.len() < self.cap && self.buf.len() - self.end < self.buf.len() / 2 {
            let size = (self.buf.len() * 2).min(self.cap);
            self.buf.resize(size, 0);
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`LineBuffer::spare`].
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Bytes read but not yet handed out as lines.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// The next complete line, if the buffer holds one.
    pub fn next_line(&mut self) -> Option<(&[u8], LineEnd)> {
        let limit = self.end.min(self.start + self.line_max + 1);
        if let Some(i) = memchr::memchr(b'\n', &self.buf[self.scanned..limit]) {
            let nl = self.scanned + i;
            if nl - self.start <= self.line_max {
                let line = self.start..nl;
                self.start = nl + 1;
                self.scanned = self.start;
                return Some((&self.buf[line], LineEnd::Newline));
            }
        }
        if self.end - self.start > self.line_max {
            let cut = self.cut_point();
            let line = self.start..self.start + cut;
            self.start += cut;
            self.scanned = self.start;
            return Some((&self.buf[line], LineEnd::Split));
        }
        self.scanned = self.end;
        None
    }

    /// What is left at the end of the stream, as one last line (`None` when nothing is).
    /// Call after [`LineBuffer::next_line`] returned `None`.
    pub fn finish(&mut self) -> Option<(&[u8], LineEnd)> {
        if self.start == self.end {
            return None;
        }
        let line = self.start..self.end;
        self.start = self.end;
        self.scanned = self.end;
        Some((&self.buf[line], LineEnd::Eof))
    }

    /// The length of the piece cut from an overlong line: `line_max`, less the bytes of a
    /// UTF-8 sequence that would straddle the cut.
    fn cut_point(&self) -> usize {
        let s = &self.buf[self.start..];
        let max = self.line_max;
        // s[max] is the first byte of the next piece; while it is a continuation byte, the
        // sequence it belongs to started before the cut.
        for back in 0..4.min(max) {
            let b = s[max - back];
            if b & 0xC0 != 0x80 {
                return if back == 0 { max } else { max - back };
            }
        }
        max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` in pieces of `step` bytes; collect the lines.
    fn lines(input: &[u8], line_max: usize, step: usize) -> Vec<(Vec<u8>, LineEnd)> {
        let mut b = LineBuffer::new(line_max, step);
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            let mut rest = piece;
            while !rest.is_empty() {
                let spare = b.spare();
                let n = spare.len().min(rest.len());
                spare[..n].copy_from_slice(&rest[..n]);
                b.filled(n);
                rest = &rest[n..];
                while let Some((l, e)) = b.next_line() {
                    out.push((l.to_vec(), e));
                }
            }
        }
        while let Some((l, e)) = b.next_line() {
            out.push((l.to_vec(), e));
        }
        if let Some((l, e)) = b.finish() {
            out.push((l.to_vec(), e));
        }
        out
    }

    #[test]
    fn lines_end_at_newlines_and_the_rest_at_eof() {
        use LineEnd::*;
        for step in [1, 2, 3, 7, 100] {
            assert_eq!(
                lines(b"a\n\nbc\r\nd\0\xffe", 16, step),
                [
                    (b"a".to_vec(), Newline),
                    (b"".to_vec(), Newline),
                    (b"bc\r".to_vec(), Newline),
                    (b"d\0\xffe".to_vec(), Eof)
                ],
                "step {step}"
            );
        }
        assert!(lines(b"", 16, 4).is_empty());
        assert_eq!(lines(b"x\n", 16, 4), [(b"x".to_vec(), Newline)]);
    }

    #[test]
    fn overlong_lines_are_cut_at_line_max_and_marked() {
        use LineEnd::*;
        for step in [1, 3, 4, 5, 64] {
            assert_eq!(
                lines(b"abcdefghij\nxy", 4, step),
                [
                    (b"abcd".to_vec(), Split),
                    (b"efgh".to_vec(), Split),
                    (b"ij".to_vec(), Newline),
                    (b"xy".to_vec(), Eof)
                ],
                "step {step}"
            );
            // Exactly line_max before the newline is one whole line.
            assert_eq!(lines(b"abcd\n", 4, step), [(b"abcd".to_vec(), Newline)]);
        }
    }

    #[test]
    fn a_cut_does_not_split_a_utf8_character() {
        // "aé" is 3 bytes; cutting at 2 would split é.
        let got = lines("aébc\n".as_bytes(), 2, 8);
        assert_eq!(got[0], (b"a".to_vec(), LineEnd::Split));
        assert_eq!(got[1], ("é".as_bytes().to_vec(), LineEnd::Split));
        assert_eq!(got[2], (b"bc".to_vec(), LineEnd::Newline));
        // Bytes that are not UTF-8 are cut at line_max.
        let got = lines(&[0x80; 9], 4, 9);
        assert_eq!(got.iter().map(|l| l.0.len()).collect::<Vec<_>>(), [4, 4, 1]);
        // Every byte comes back, in order.
        let text = "ünïcödé ".repeat(1000);
        let got = lines(text.as_bytes(), 7, 13);
        let joined: Vec<u8> = got.iter().flat_map(|l| l.0.clone()).collect();
        assert_eq!(joined, text.as_bytes());
        assert!(
            got.iter()
                .all(|l| l.0.len() <= 7 && std::str::from_utf8(&l.0).is_ok())
        );
    }

    #[test]
    fn the_default_line_max_is_journalds() {
        let long = vec![b'x'; LINE_MAX * 2 + 5];
        let got = lines(&long, LINE_MAX, 65536);
        assert_eq!(
            got.iter().map(|l| (l.0.len(), l.1)).collect::<Vec<_>>(),
            [
                (LINE_MAX, LineEnd::Split),
                (LINE_MAX, LineEnd::Split),
                (5, LineEnd::Eof)
            ]
        );
    }

    #[test]
    fn starts_small_and_grows_only_as_the_output_needs() {
        let mut b = LineBuffer::new(LINE_MAX, 64 * 1024);
        assert_eq!(b.spare().len(), FIRST_SIZE);
        // Short lines, read one at a time, keep it at its first size.
        for _ in 0..100 {
            b.spare()[..6].copy_from_slice(b"hello\n");
            b.filled(6);
            assert_eq!(b.next_line(), Some((&b"hello"[..], LineEnd::Newline)));
        }
        assert_eq!(b.buf.len(), FIRST_SIZE);
        // A line longer than the buffer makes it grow, never past one read beyond LINE_MAX,
        // and is cut at LINE_MAX as before.
        loop {
            let room = b.spare();
            assert!(!room.is_empty());
            let n = room.len();
            room.fill(b'x');
            b.filled(n);
            if let Some((line, end)) = b.next_line() {
                assert_eq!((line.len(), end), (LINE_MAX, LineEnd::Split));
                break;
            }
        }
        assert!(b.buf.len() > FIRST_SIZE && b.buf.len() <= LINE_MAX + 64 * 1024);
    }
}
