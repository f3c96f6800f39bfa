//! A reader for Python pickles of plain data (protocols 0 to 5): the `.pkl` files nnU-Net v1
//! writes with `pickle.dump`, whose plans hold dicts, lists, tuples, numbers, strings and numpy
//! arrays and scalars.
//!
//! Nothing is executed: a class reference stays a [`Value::Global`] and an instance a
//! [`Value::Object`], except the few constructors plain data is made of, which are evaluated
//! here: `collections.OrderedDict`, `builtins.set`/`frozenset`, `_codecs.encode` (protocol 2's
//! bytes), numpy's `_reconstruct` + state (arrays, read as f64) and `scalar` (numpy numbers).
//! candle's own pickle reader knows only protocol 2 (what `torch.save` writes).

use std::collections::HashMap;

/// A decoded pickle value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `bool`.
    Bool(bool),
    /// `int` (and numpy integers).
    Int(i64),
    /// `float` (and numpy floats).
    Float(f64),
    /// `str`.
    Str(String),
    /// `bytes` / `bytearray`.
    Bytes(Vec<u8>),
    /// `list` or `set`.
    List(Vec<Value>),
    /// `tuple`.
    Tuple(Vec<Value>),
    /// `dict` or `OrderedDict`, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A numpy array of numbers: its shape and values (C order).
    Array {
        /// The shape.
        shape: Vec<usize>,
        /// The values, converted to f64.
        data: Vec<f64>,
    },
    /// A numpy dtype (`'<f8'`, `'<i8'`, ...).
    Dtype(String),
    /// A class or function reference (`module`, `name`).
    Global(String, String),
    /// Any other instance: what constructed it and the state it was given.
    Object {
        /// The callable (usually a [`Value::Global`]).
        callable: Box<Value>,
        /// Its arguments.
        args: Box<Value>,
        /// `__setstate__`'s argument, if any.
        state: Option<Box<Value>>,
    },
}

impl Value {
    /// The value under key `key` (a string or an integer key) of a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let Value::Dict(items) = self else {
            return None;
        };
        items
            .iter()
            .find(|(k, _)| match k {
                Value::Str(s) => s == key,
                Value::Int(i) => i.to_string() == key,
                _ => false,
            })
            .map(|(_, v)| v)
    }

    /// A number as f64 (ints, floats, bools and one-element arrays).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::Array { data, .. } if data.len() == 1 => Some(data[0]),
            _ => None,
        }
    }

    /// A non-negative whole number.
    pub fn as_usize(&self) -> Option<usize> {
        match self {
            Value::Int(i) => usize::try_from(*i).ok(),
            Value::Float(f) if f.fract() == 0.0 && *f >= 0.0 => Some(*f as usize),
            Value::Array { data, .. } if data.len() == 1 => Value::Float(data[0]).as_usize(),
            _ => None,
        }
    }

    /// The items of a list, tuple or 1-D array.
    pub fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::List(v) | Value::Tuple(v) => Some(v.clone()),
            Value::Array { shape, data } if shape.len() == 1 => {
                Some(data.iter().map(|&x| Value::Float(x)).collect())
            }
            Value::Array { shape, data } if shape.len() == 2 => {
                let cols = shape[1];
                Some(
                    (0..shape[0])
                        .map(|r| Value::Array {
                            shape: vec![cols],
                            data: data[r * cols..(r + 1) * cols].to_vec(),
                        })
                        .collect(),
                )
            }
            _ => None,
        }
    }

    /// A sequence of non-negative whole numbers.
    pub fn as_usizes(&self) -> Option<Vec<usize>> {
        self.items()?.iter().map(Value::as_usize).collect()
    }

    /// A sequence of numbers.
    pub fn as_f64s(&self) -> Option<Vec<f64>> {
        self.items()?.iter().map(Value::as_f64).collect()
    }
}

/// Why a pickle cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("byte {pos}: {msg}")]
pub struct PickleError {
    /// Offset of the opcode at fault.
    pub pos: usize,
    /// What is wrong.
    pub msg: String,
}

/// Decodes one pickle from `bytes`.
pub fn read(bytes: &[u8]) -> Result<Value, PickleError> {
    Machine {
        bytes,
        pos: 0,
        op_pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    }
    .run()
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    op_pos: usize,
    /// Values, each with the memo key it was stored under: Python's memo holds references, so
    /// a container filled after it was memoised is stored again as it grows.
    stack: Vec<(Value, Option<u64>)>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
}

impl Machine<'_> {
    fn err<T>(&self, msg: impl Into<String>) -> Result<T, PickleError> {
        Err(PickleError {
            pos: self.op_pos,
            msg: msg.into(),
        })
    }

    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return self.err("truncated");
        };
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn uint(&mut self, n: usize) -> Result<u64, PickleError> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |a, &x| (a << 8) | u64::from(x)))
    }

    fn len(&mut self, n: usize) -> Result<usize, PickleError> {
        let v = self.uint(n)?;
        match usize::try_from(v) {
            Ok(v) if v <= self.bytes.len() => Ok(v),
            _ => self.err(format!("length {v} beyond the file")),
        }
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.bytes[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return self.err("unterminated line");
        };
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&mut self, n: usize) -> Result<Value, PickleError> {
        let b = self.take(n)?.to_vec();
        match String::from_utf8(b) {
            Ok(s) => Ok(Value::Str(s)),
            Err(_) => self.err("invalid UTF-8 in a string"),
        }
    }

    fn push(&mut self, v: Value) {
        self.stack.push((v, None));
    }

    fn pop_tagged(&mut self) -> Result<(Value, Option<u64>), PickleError> {
        match self.stack.pop() {
            Some(v) => Ok(v),
            None => self.err("stack underflow"),
        }
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        Ok(self.pop_tagged()?.0)
    }

    fn top(&mut self) -> Result<&mut Value, PickleError> {
        if self.stack.is_empty() {
            return self.err("stack underflow");
        }
        let n = self.stack.len();
        Ok(&mut self.stack[n - 1].0)
    }

    /// After the top was changed in place: its memo entry follows.
    fn refresh(&mut self) {
        if let Some((v, Some(k))) = self.stack.last() {
            self.memo.insert(*k, v.clone());
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let Some(m) = self.marks.pop() else {
            return self.err("no mark");
        };
        if m > self.stack.len() {
            return self.err("mark beyond the stack");
        }
        Ok(self
            .stack
            .split_off(m)
            .into_iter()
            .map(|(v, _)| v)
            .collect())
    }

    fn memo_get(&mut self, key: u64) -> Result<(), PickleError> {
        match self.memo.get(&key) {
            Some(v) => {
                let v = v.clone();
                self.push(v);
                Ok(())
            }
            None => self.err(format!("memo {key} not set")),
        }
    }

    fn memo_put(&mut self, key: u64) -> Result<(), PickleError> {
        if self.stack.is_empty() {
            return self.err("stack underflow");
        }
        let n = self.stack.len();
        self.stack[n - 1].1 = Some(key);
        let v = self.stack[n - 1].0.clone();
        self.memo.insert(key, v);
        Ok(())
    }

    fn run(mut self) -> Result<Value, PickleError> {
        loop {
            self.op_pos = self.pos;
            let op = self.take(1)?[0];
            match op {
                0x80 => {
                    self.take(1)?;
                }
                // FRAME: a length hint only.
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'N' => self.push(Value::None),
                0x88 => self.push(Value::Bool(true)),
                0x89 => self.push(Value::Bool(false)),
                b'K' => {
                    let v = self.uint(1)?;
                    self.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.uint(2)?;
                    self.push(Value::Int(v as i64));
                }
                b'J' => {
                    let v = self.uint(4)? as u32 as i32;
                    self.push(Value::Int(i64::from(v)));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.len(1)?
                    } else {
                        self.len(4)?
                    };
                    let b = self.take(n)?.to_vec();
                    if n > 8 {
                        return self.err("integer wider than 64 bits");
                    }
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= i64::from(x) << (8 * i);
                    }
                    // Sign-extend from the top byte.
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.push(Value::Int(v));
                }
                b'I' | b'L' => {
                    let s = self.line()?;
                    let s = s.trim_end_matches('L');
                    let v = match s {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        _ => match s.parse::<i64>() {
                            Ok(i) => Value::Int(i),
                            Err(_) => return self.err(format!("integer {s:?}")),
                        },
                    };
                    self.push(v);
                }
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Value::Float(f64::from_be_bytes(a)));
                }
                b'F' => {
                    let s = self.line()?;
                    match s.trim().parse::<f64>() {
                        Ok(f) => self.push(Value::Float(f)),
                        Err(_) => return self.err(format!("float {s:?}")),
                    }
                }
                0x8c => {
                    let n = self.len(1)?;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                b'X' => {
                    let n = self.len(4)?;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                0x8d => {
                    let n = self.len(8)?;
                    let v = self.utf8(n)?;
                    self.push(v);
                }
                b'V' => {
                    let s = self.line()?;
                    self.push(Value::Str(s));
                }
                // Python 2 strings: kept as text (plans hold ASCII keys).
                b'U' | b'T' => {
                    let n = if op == b'U' {
                        self.len(1)?
                    } else {
                        self.len(4)?
                    };
                    let b = self.take(n)?;
                    let s = String::from_utf8_lossy(b).into_owned();
                    self.push(Value::Str(s));
                }
                b'S' => {
                    let s = self.line()?;
                    let s = s.trim().trim_matches(|c| c == '\'' || c == '"').to_string();
                    self.push(Value::Str(s));
                }
                b'C' | b'B' | 0x8e | 0x96 => {
                    let n = match op {
                        b'C' => self.len(1)?,
                        b'B' => self.len(4)?,
                        _ => self.len(8)?,
                    };
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b));
                }
                b')' => self.push(Value::Tuple(Vec::new())),
                b']' => self.push(Value::List(Vec::new())),
                b'}' => self.push(Value::Dict(Vec::new())),
                0x8f => self.push(Value::List(Vec::new())),
                b'(' => self.marks.push(self.stack.len()),
                b't' => {
                    let v = self.pop_mark()?;
                    self.push(Value::Tuple(v));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n {
                        return self.err("stack underflow");
                    }
                    let v = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(v.into_iter().map(|(v, _)| v).collect()));
                }
                b'l' => {
                    let v = self.pop_mark()?;
                    self.push(Value::List(v));
                }
                0x91 => {
                    let v = self.pop_mark()?;
                    self.push(Value::List(v));
                }
                b'd' => {
                    let v = self.pop_mark()?;
                    let d = pairs(v).map_or_else(|| self.err("odd dict items"), Ok)?;
                    self.push(Value::Dict(d));
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        _ => return self.err("APPEND to a non-list"),
                    }
                    self.refresh();
                }
                b'e' | 0x90 => {
                    let v = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(v),
                        _ => return self.err("APPENDS to a non-list"),
                    }
                    self.refresh();
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => return self.err("SETITEM on a non-dict"),
                    }
                    self.refresh();
                }
                b'u' => {
                    let v = self.pop_mark()?;
                    let items = pairs(v).map_or_else(|| self.err("odd dict items"), Ok)?;
                    match self.top()? {
                        Value::Dict(d) => d.extend(items),
                        _ => return self.err("SETITEMS on a non-dict"),
                    }
                    self.refresh();
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v);
                }
                b'q' => {
                    let k = self.uint(1)?;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.uint(4)?;
                    self.memo_put(k)?;
                }
                b'p' => {
                    let s = self.line()?;
                    match s.parse() {
                        Ok(k) => self.memo_put(k)?,
                        Err(_) => return self.err(format!("memo key {s:?}")),
                    }
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.uint(1)?;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.uint(4)?;
                    self.memo_get(k)?;
                }
                b'g' => {
                    let s = self.line()?;
                    match s.parse() {
                        Ok(k) => self.memo_get(k)?,
                        Err(_) => return self.err(format!("memo key {s:?}")),
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(module, name));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.push(Value::Global(m, n)),
                        _ => return self.err("STACK_GLOBAL without two strings"),
                    }
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(callable, args)?;
                    self.push(v);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(callable, args)?;
                    self.push(v);
                }
                b'b' => {
                    // BUILD changes the object in place: it keeps its memo key.
                    let state = self.pop()?;
                    let (obj, tag) = self.pop_tagged()?;
                    let v = self.build(obj, state)?;
                    self.stack.push((v, tag));
                    self.refresh();
                }
                _ => return self.err(format!("unsupported opcode 0x{op:02x}")),
            }
        }
    }

    /// REDUCE / NEWOBJ: the constructors plain data is made of; anything else is kept as an
    /// object.
    fn call(&self, callable: Value, args: Value) -> Result<Value, PickleError> {
        let Value::Global(module, name) = &callable else {
            return Ok(object(callable, args));
        };
        let argv = match &args {
            Value::Tuple(v) => v.as_slice(),
            _ => &[],
        };
        let numpy = matches!(
            module.as_str(),
            "numpy.core.multiarray" | "numpy._core.multiarray"
        );
        Ok(match (module.as_str(), name.as_str(), argv) {
            ("collections", "OrderedDict" | "defaultdict", _) => {
                let mut d = Vec::new();
                if let Some(Value::List(items)) = argv.first() {
                    for it in items {
                        if let Value::List(kv) | Value::Tuple(kv) = it {
                            if let [k, v] = kv.as_slice() {
                                d.push((k.clone(), v.clone()));
                            }
                        }
                    }
                }
                Value::Dict(d)
            }
            ("builtins" | "__builtin__", "set" | "frozenset" | "list", [Value::List(v)]) => {
                Value::List(v.clone())
            }
            ("builtins" | "__builtin__", "set" | "frozenset" | "list", []) => {
                Value::List(Vec::new())
            }
            ("builtins" | "__builtin__", "tuple", [Value::List(v) | Value::Tuple(v)]) => {
                Value::Tuple(v.clone())
            }
            ("builtins" | "__builtin__", "bytearray" | "bytes", [Value::Bytes(b), ..]) => {
                Value::Bytes(b.clone())
            }
            ("_codecs", "encode", [Value::Str(s), ..]) => {
                // Protocol 2 writes bytes as their latin-1 text.
                Value::Bytes(s.chars().map(|c| c as u32 as u8).collect())
            }
            ("numpy", "dtype", [Value::Str(code), ..]) => Value::Dtype(code.clone()),
            (_, "scalar", [Value::Dtype(code), Value::Bytes(b)]) if numpy => {
                match decode(code, b) {
                    Some(v) if v.len() == 1 => number(code, v[0]),
                    _ => return self.err(format!("numpy scalar of dtype {code:?}")),
                }
            }
            _ => object(callable, args),
        })
    }

    /// BUILD: numpy dtypes and arrays get their state; other objects keep it.
    fn build(&self, obj: Value, state: Value) -> Result<Value, PickleError> {
        match obj {
            Value::Dtype(code) => {
                // (version, byte order, ...): a '>' order makes a big-endian dtype.
                let order = match &state {
                    Value::Tuple(s) => match s.get(1) {
                        Some(Value::Str(o)) => o.clone(),
                        _ => "|".into(),
                    },
                    _ => "|".into(),
                };
                let code = code.trim_start_matches(['<', '>', '=', '|']);
                Ok(Value::Dtype(if order == ">" {
                    format!(">{code}")
                } else {
                    format!("<{code}")
                }))
            }
            Value::Object {
                callable,
                args,
                state: None,
            } if matches!(&*callable, Value::Global(m, n)
                if (m == "numpy.core.multiarray" || m == "numpy._core.multiarray")
                    && n == "_reconstruct") =>
            {
                let Value::Tuple(s) = &state else {
                    return self.err("numpy array state is not a tuple");
                };
                let (shape, dtype, fortran, raw) = match s.as_slice() {
                    [_, shape, Value::Dtype(d), Value::Bool(f), raw] => (shape, d, *f, raw),
                    _ => return self.err("numpy array state of an unknown form"),
                };
                let Some(shape) = shape.as_usizes() else {
                    return self.err("numpy array shape");
                };
                let n: usize = shape.iter().product();
                let data = match raw {
                    Value::Bytes(b) => match decode(dtype, b) {
                        Some(v) if v.len() == n => v,
                        _ => return self.err(format!("numpy array of dtype {dtype:?}")),
                    },
                    // Object arrays pickle their items as a list.
                    Value::List(items) => {
                        match items
                            .iter()
                            .map(Value::as_f64)
                            .collect::<Option<Vec<f64>>>()
                        {
                            Some(v) if v.len() == n => v,
                            _ => return self.err("numpy object array of non-numbers"),
                        }
                    }
                    _ => return self.err("numpy array data"),
                };
                let data = if fortran && shape.len() > 1 {
                    fortran_to_c(&data, &shape)
                } else {
                    data
                };
                let _ = args;
                Ok(Value::Array { shape, data })
            }
            Value::Dict(mut d) => {
                if let Value::Dict(more) = state {
                    d.extend(more);
                }
                Ok(Value::Dict(d))
            }
            Value::Object {
                callable,
                args,
                state: _,
            } => Ok(Value::Object {
                callable,
                args,
                state: Some(Box::new(state)),
            }),
            other => Ok(Value::Object {
                callable: Box::new(other),
                args: Box::new(Value::Tuple(Vec::new())),
                state: Some(Box::new(state)),
            }),
        }
    }
}

fn object(callable: Value, args: Value) -> Value {
    Value::Object {
        callable: Box::new(callable),
        args: Box::new(args),
        state: None,
    }
}

fn pairs(v: Vec<Value>) -> Option<Vec<(Value, Value)>> {
    if !v.len().is_multiple_of(2) {
        return None;
    }
    let mut it = v.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Some(out)
}

/// A numpy number as the matching value: integers and booleans stay whole.
fn number(code: &str, v: f64) -> Value {
    let kind = code.trim_start_matches(['<', '>', '=', '|']);
    match kind.chars().next() {
        Some('i' | 'u') => Value::Int(v as i64),
        Some('b') => Value::Bool(v != 0.0),
        _ => Value::Float(v),
    }
}

/// The values of raw array bytes of numpy dtype `code` (`<f8`, `>i4`, `|b1`, ...).
fn decode(code: &str, b: &[u8]) -> Option<Vec<f64>> {
    let big = code.starts_with('>');
    let kind = code.trim_start_matches(['<', '>', '=', '|']);
    let size: usize = kind.get(1..)?.parse().ok()?;
    if size == 0 || !b.len().is_multiple_of(size) {
        return None;
    }
    let word = |c: &[u8]| -> u64 {
        let mut a = [0u8; 8];
        if big {
            a[8 - size..].copy_from_slice(c);
            u64::from_be_bytes(a)
        } else {
            a[..size].copy_from_slice(c);
            u64::from_le_bytes(a)
        }
    };
    let f = |c: &[u8]| -> Option<f64> {
        let w = word(c);
        Some(match (kind.as_bytes()[0], size) {
            (b'f', 8) => f64::from_bits(w),
            (b'f', 4) => f64::from(f32::from_bits(w as u32)),
            (b'f', 2) => f64::from(half::f16::from_bits(w as u16)),
            (b'i', 1) => f64::from(w as u8 as i8),
            (b'i', 2) => f64::from(w as u16 as i16),
            (b'i', 4) => f64::from(w as u32 as i32),
            (b'i', 8) => w as i64 as f64,
            (b'u' | b'b', 1 | 2 | 4 | 8) => w as f64,
            _ => return None,
        })
    };
    b.chunks_exact(size).map(f).collect()
}

fn fortran_to_c(data: &[f64], shape: &[usize]) -> Vec<f64> {
    let n = data.len();
    let mut out = vec![0.0; n];
    let d = shape.len();
    let mut idx = vec![0usize; d];
    for v in out.iter_mut() {
        // Fortran offset of the C-ordered index.
        let mut off = 0;
        let mut stride = 1;
        for a in 0..d {
            off += idx[a] * stride;
            stride *= shape[a];
        }
        *v = data[off];
        for a in (0..d).rev() {
            idx[a] += 1;
            if idx[a] < shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_4_dict_of_basics() {
        // pickle.dumps({'a': [1, 2.5, 'x'], 'b': (True, None), 300: -2}, protocol=4)
        let b: &[u8] = b"\x80\x04\x95,\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94]\x94(K\x01G@\x04\x00\x00\x00\x00\x00\x00\x8c\x01x\x94e\x8c\x01b\x94\x88N\x86\x94M,\x01J\xfe\xff\xff\xffu.";
        let v = read(b).unwrap();
        assert_eq!(
            v.get("a"),
            Some(&Value::List(vec![
                Value::Int(1),
                Value::Float(2.5),
                Value::Str("x".into())
            ]))
        );
        assert_eq!(
            v.get("b"),
            Some(&Value::Tuple(vec![Value::Bool(true), Value::None]))
        );
        assert_eq!(v.get("300"), Some(&Value::Int(-2)));
    }

    #[test]
    fn truncated_input_is_an_error() {
        let e = read(b"\x80\x04\x8c\x05ab").unwrap_err();
        assert!(e.msg.contains("truncated"), "{e}");
    }

    #[test]
    fn fortran_order_is_reordered() {
        // [[1, 2, 3], [4, 5, 6]] stored column-major.
        let c = fortran_to_c(&[1.0, 4.0, 2.0, 5.0, 3.0, 6.0], &[2, 3]);
        assert_eq!(c, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }
}
