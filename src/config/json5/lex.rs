//! Strings and numbers: the two lexemes of JSON5 with more than one character of grammar.

use super::{Parser, Res, Value, is_ident_part, is_line_break, show};

impl Parser<'_> {
    /// A string quoted with `quote`; the cursor is on the opening quote.
    pub(super) fn string(&mut self, quote: char) -> Res<String> {
        let start = self.pos;
        self.bump();
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(self.error_at(start, "unterminated string")),
                Some(c) if c == quote => {
                    self.bump();
                    return Ok(out);
                }
                Some('\\') => {
                    self.bump();
                    self.escape(&mut out)?;
                }
                Some('\n' | '\r') => {
                    return Err(self.error("line break inside a string (write \\n)"));
                }
                Some(c) => {
                    out.push(c);
                    self.bump();
                }
            }
        }
    }

    /// One escape sequence; the cursor is past the backslash.
    fn escape(&mut self, out: &mut String) -> Res<()> {
        let pos = self.pos;
        let Some(c) = self.bump() else {
            return Err(self.error("unterminated string"));
        };
        match c {
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => {
                // A backslash before CR LF continues the line.
                if self.peek() == Some('\n') {
                    self.bump();
                }
            }
            't' => out.push('\t'),
            'v' => out.push('\u{b}'),
            '0' if !self.peek().is_some_and(|d| d.is_ascii_digit()) => out.push('\0'),
            '1'..='9' | '0' => return Err(self.error_at(pos, "octal escapes are not allowed")),
            'x' => {
                let v = self.hex_digits(2)?;
                out.push(char::from_u32(v).unwrap_or('\u{FFFD}'));
            }
            'u' => {
                let c = self.unicode_escape()?;
                out.push(c);
            }
            c if is_line_break(c) => {}
            c => out.push(c),
        }
        Ok(())
    }

    /// `\uXXXX`, with a following `\uXXXX` when the first is a high surrogate.
    fn unicode_escape(&mut self) -> Res<char> {
        let pos = self.pos;
        let hi = self.hex_digits(4)?;
        if !(0xD800..0xDC00).contains(&hi) {
            return char::from_u32(hi).ok_or_else(|| self.error_at(pos, "\\u escape of a lone surrogate"));
        }
        if self.peek() != Some('\\') || self.peek2() != Some('u') {
            return Err(self.error_at(pos, "\\u escape of a lone surrogate"));
        }
        self.bump();
        self.bump();
        let lo = self.hex_digits(4)?;
        if !(0xDC00..0xE000).contains(&lo) {
            return Err(self.error_at(pos, "\\u escape of a lone surrogate"));
        }
        let v = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
        char::from_u32(v).ok_or_else(|| self.error_at(pos, "invalid \\u escape"))
    }

    fn hex_digits(&mut self, n: usize) -> Res<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            match self.peek().and_then(|c| c.to_digit(16)) {
                Some(d) => {
                    v = v * 16 + d;
                    self.bump();
                }
                None => {
                    let found = show(self.peek());
                    return Err(self.error(format!("expected a hex digit, found {found}")));
                }
            }
        }
        Ok(v)
    }

    /// A number; the cursor is on a digit, a sign or a decimal point.
    pub(super) fn number(&mut self) -> Res<Value> {
        let start = self.pos;
        let negative = match self.peek() {
            Some('-') => {
                self.bump();
                true
            }
            Some('+') => {
                self.bump();
                false
            }
            _ => false,
        };
        let value = match self.peek() {
            Some('I') | Some('N') => {
                let word = self.identifier();
                match word.as_str() {
                    "Infinity" => Value::Float(f64::INFINITY),
                    "NaN" => Value::Float(f64::NAN),
                    _ => return Err(self.error_at(start, format!("invalid number `{word}`"))),
                }
            }
            Some('0') if matches!(self.peek2(), Some('x' | 'X')) => self.hex_number(start)?,
            _ => self.decimal(start)?,
        };
        if self.peek().is_some_and(is_ident_part) {
            let found = show(self.peek());
            return Err(self.error(format!("unexpected {found} after a number")));
        }
        Ok(match value {
            Value::Int(i) if negative => Value::Int(-i),
            Value::Float(f) if negative => Value::Float(-f),
            v => v,
        })
    }

    fn hex_number(&mut self, start: super::Pos) -> Res<Value> {
        self.bump();
        self.bump();
        let mut v: i128 = 0;
        let mut any = false;
        while let Some(d) = self.peek().and_then(|c| c.to_digit(16)) {
            self.bump();
            any = true;
            v = v
                .checked_mul(16)
                .and_then(|v| v.checked_add(i128::from(d)))
                .ok_or_else(|| self.error_at(start, "hexadecimal number too large"))?;
        }
        if !any {
            return Err(self.error("expected a hex digit after 0x"));
        }
        Ok(Value::Int(v))
    }

    fn decimal(&mut self, start: super::Pos) -> Res<Value> {
        let mut text = String::new();
        let int_digits = self.digits(&mut text);
        if int_digits > 1 && text.starts_with('0') {
            return Err(self.error_at(start, "numbers cannot have leading zeros"));
        }
        let mut float = false;
        let mut frac_digits = 0;
        if self.peek() == Some('.') {
            self.bump();
            text.push('.');
            float = true;
            frac_digits = self.digits(&mut text);
        }
        if int_digits == 0 && frac_digits == 0 {
            let found = show(self.peek());
            return Err(self.error(format!("expected a digit, found {found}")));
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            float = true;
            self.bump();
            text.push('e');
            if let Some(sign @ ('+' | '-')) = self.peek() {
                self.bump();
                text.push(sign);
            }
            if self.digits(&mut text) == 0 {
                let found = show(self.peek());
                return Err(self.error(format!("expected an exponent digit, found {found}")));
            }
        }
        if !float {
            if let Ok(i) = text.parse::<i128>() {
                return Ok(Value::Int(i));
            }
        }
        text.parse::<f64>().map(Value::Float).map_err(|_| self.error_at(start, "invalid number"))
    }

    /// Appends ASCII digits to `text`; returns how many.
    fn digits(&mut self, text: &mut String) -> usize {
        let mut n = 0;
        while let Some(c) = self.peek().filter(char::is_ascii_digit) {
            text.push(c);
            self.bump();
            n += 1;
        }
        n
    }
}
