//! A strict unpickler for `torch.save`'s `data.pkl`: the opcodes of pickle protocols 2 to 4 that
//! build plain values, and only the globals a state dict of tensors needs. A pickle can call any
//! importable function; this one never calls anything: it recognises `collections.OrderedDict`,
//! `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter` and the storage classes
//! by name, builds descriptions of them, and refuses every other global by name.

use anyhow::{bail, Result};
use std::collections::HashMap;

/// Element types of the storages read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    I64,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I64 => 8,
        }
    }
}

/// A storage a tensor views: the archive's `data/<key>`, of `numel` elements.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Storage {
    pub dtype: Dtype,
    pub key: String,
    pub numel: u64,
}

/// A tensor as `_rebuild_tensor_v2` describes it: a strided view of a storage.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorView {
    pub storage: Storage,
    /// In elements.
    pub offset: u64,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(Dtype),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage(Storage),
    Tensor(TensorView),
}

fn global(module: &str, name: &str) -> Option<Global> {
    Some(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch", "FloatStorage") => Global::Storage(Dtype::F32),
        ("torch", "HalfStorage") => Global::Storage(Dtype::F16),
        ("torch", "BFloat16Storage") => Global::Storage(Dtype::BF16),
        ("torch", "LongStorage") => Global::Storage(Dtype::I64),
        _ => return None,
    })
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Positions in `stack` where a MARK was pushed.
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else { bail!("truncated at byte {}", self.pos) };
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn le(&mut self, n: usize) -> Result<u64> {
        let b = self.take(n)?;
        Ok(b.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64))
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else { bail!("unterminated line at byte {}", self.pos) };
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
    fn text(&mut self, n: usize) -> Result<Value> {
        let b = self.take(n)?;
        Ok(Value::Str(String::from_utf8(b.to_vec()).map_err(|_| anyhow::anyhow!("a string that is not UTF-8"))?))
    }
    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().ok_or_else(|| anyhow::anyhow!("stack underflow at byte {}", self.pos))
    }
    fn top(&mut self) -> Result<&mut Value> {
        let pos = self.pos;
        self.stack.last_mut().ok_or_else(|| anyhow::anyhow!("stack underflow at byte {pos}"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let Some(m) = self.marks.pop() else { bail!("no MARK before byte {}", self.pos) };
        if m > self.stack.len() {
            bail!("MARK beyond the stack at byte {}", self.pos);
        }
        Ok(self.stack.split_off(m))
    }
    fn pop_n(&mut self, n: usize) -> Result<Vec<Value>> {
        if self.stack.len() < n {
            bail!("stack underflow at byte {}", self.pos);
        }
        let at = self.stack.len() - n;
        Ok(self.stack.split_off(at))
    }
    fn set_items(&mut self, items: Vec<Value>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            bail!("SETITEMS with an odd number of values at byte {}", self.pos);
        }
        let Value::Dict(d) = self.top()? else { bail!("SETITEM on something that is not a dict") };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }
    fn append(&mut self, items: Vec<Value>) -> Result<()> {
        let Value::List(l) = self.top()? else { bail!("APPEND on something that is not a list") };
        l.extend(items);
        Ok(())
    }
}

fn int(v: &Value, what: &str) -> Result<u64> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as u64),
        _ => bail!("{what} is not a non-negative integer: {v:?}"),
    }
}

fn ints(v: &Value, what: &str) -> Result<Vec<usize>> {
    match v {
        Value::Tuple(xs) => xs.iter().map(|x| int(x, what).map(|i| i as usize)).collect(),
        _ => bail!("{what} is not a tuple: {v:?}"),
    }
}

/// What calling `g` with `args` makes, for the globals allowed.
fn reduce(g: Global, args: Vec<Value>) -> Result<Value> {
    match g {
        Global::OrderedDict if args.is_empty() => Ok(Value::Dict(Vec::new())),
        Global::RebuildTensor => {
            // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
            let Some(Value::Storage(storage)) = args.first() else { bail!("_rebuild_tensor_v2 without a storage") };
            if args.len() < 4 {
                bail!("_rebuild_tensor_v2 with {} arguments", args.len());
            }
            let t = TensorView {
                storage: storage.clone(),
                offset: int(&args[1], "a storage offset")?,
                shape: ints(&args[2], "a tensor's size")?,
                stride: ints(&args[3], "a tensor's stride")?,
            };
            if t.shape.len() != t.stride.len() {
                bail!("a tensor of size {:?} with stride {:?}", t.shape, t.stride);
            }
            Ok(Value::Tensor(t))
        }
        Global::RebuildParameter => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            _ => bail!("_rebuild_parameter without a tensor"),
        },
        _ => bail!("{g:?} called with unexpected arguments"),
    }
}

/// A persistent id `('storage', storage_type, key, location, numel)` as a storage.
fn persistent(pid: Value) -> Result<Value> {
    if let Value::Tuple(t) = &pid {
        if let [Value::Str(tag), Value::Global(Global::Storage(dtype)), Value::Str(key), _, numel] = t.as_slice() {
            if tag == "storage" {
                return Ok(Value::Storage(Storage { dtype: *dtype, key: key.clone(), numel: int(numel, "a storage size")? }));
            }
        }
    }
    bail!("unsupported persistent id {pid:?} (expected a torch storage)")
}

/// The number of values in `v`, nested ones included.
fn nodes(v: &Value) -> usize {
    1 + match v {
        Value::Tuple(xs) | Value::List(xs) => xs.iter().map(nodes).sum(),
        Value::Dict(kv) => kv.iter().map(|(k, v)| nodes(k) + nodes(v)).sum(),
        _ => 0,
    }
}

/// Counts a copy of `v` (a memo put or get). A pickle fetching ever larger nests of itself would
/// grow without bound, so the copies may total a few times the pickle's size only.
fn charge(copied: &mut usize, v: &Value, size: usize, at: usize) -> Result<()> {
    *copied += nodes(v);
    if *copied > 8 * size + 4096 {
        bail!("the pickle's values expand far beyond its size (byte {at})");
    }
    Ok(())
}

/// Runs the pickle; the value it returns.
pub fn load(data: &[u8]) -> Result<Value> {
    let mut m = Machine { data, pos: 0, stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() };
    let mut copied = 0usize;
    loop {
        let at = m.pos;
        let op = m.u8()?;
        match op {
            0x80 => {
                let proto = m.u8()?;
                if proto > 5 {
                    bail!("pickle protocol {proto} is not supported");
                }
            }
            0x95 => drop(m.take(8)?), // FRAME
            b'.' => return m.pop(),
            b'(' => m.marks.push(m.stack.len()),
            b'N' => m.stack.push(Value::None),
            0x88 => m.stack.push(Value::Bool(true)),
            0x89 => m.stack.push(Value::Bool(false)),
            b'K' => {
                let v = m.le(1)?;
                m.stack.push(Value::Int(v as i64))
            }
            b'M' => {
                let v = m.le(2)?;
                m.stack.push(Value::Int(v as i64))
            }
            b'J' => {
                let v = m.le(4)? as u32 as i32;
                m.stack.push(Value::Int(v as i64))
            }
            0x8a => {
                // LONG1: a little-endian two's-complement integer of n bytes.
                let n = m.u8()? as usize;
                if n > 8 {
                    bail!("an integer of {n} bytes at byte {at}");
                }
                let b = m.take(n)?;
                let mut v = b.iter().rev().fold(0i64, |a, &x| (a << 8) | x as i64);
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                m.stack.push(Value::Int(v));
            }
            b'G' => {
                let b: [u8; 8] = m.take(8)?.try_into()?;
                m.stack.push(Value::Float(f64::from_be_bytes(b)))
            }
            b'X' => {
                let n = m.le(4)? as usize;
                let v = m.text(n)?;
                m.stack.push(v)
            }
            0x8c => {
                let n = m.u8()? as usize;
                let v = m.text(n)?;
                m.stack.push(v)
            }
            0x8d => {
                let n = m.le(8)? as usize;
                let v = m.text(n)?;
                m.stack.push(v)
            }
            b')' => m.stack.push(Value::Tuple(Vec::new())),
            b't' => {
                let items = m.pop_mark()?;
                m.stack.push(Value::Tuple(items))
            }
            0x85..=0x87 => {
                let items = m.pop_n((op - 0x84) as usize)?;
                m.stack.push(Value::Tuple(items))
            }
            b']' => m.stack.push(Value::List(Vec::new())),
            b'l' => {
                let items = m.pop_mark()?;
                m.stack.push(Value::List(items))
            }
            b'a' => {
                let v = m.pop()?;
                m.append(vec![v])?
            }
            b'e' => {
                let items = m.pop_mark()?;
                m.append(items)?
            }
            b'}' => m.stack.push(Value::Dict(Vec::new())),
            b'd' => {
                let items = m.pop_mark()?;
                m.stack.push(Value::Dict(Vec::new()));
                m.set_items(items)?
            }
            b's' => {
                let items = m.pop_n(2)?;
                m.set_items(items)?
            }
            b'u' => {
                let items = m.pop_mark()?;
                m.set_items(items)?
            }
            b'q' | b'r' | 0x94 => {
                let key = match op {
                    b'q' => m.le(1)?,
                    b'r' => m.le(4)?,
                    _ => m.memo.len() as u64,
                };
                let v = m.top()?.clone();
                charge(&mut copied, &v, data.len(), at)?;
                m.memo.insert(key, v);
            }
            b'h' | b'j' => {
                let key = m.le(if op == b'h' { 1 } else { 4 })?;
                let Some(v) = m.memo.get(&key).cloned() else { bail!("memo entry {key} used before it was set (byte {at})") };
                charge(&mut copied, &v, data.len(), at)?;
                m.stack.push(v)
            }
            b'c' => {
                let (module, name) = (m.line()?, m.line()?);
                match global(&module, &name) {
                    Some(g) => m.stack.push(Value::Global(g)),
                    None => bail!("refuses the global `{module}.{name}`: only tensors are read (a pickle can run code)"),
                }
            }
            0x93 => {
                // STACK_GLOBAL (protocol 4): module and name from the stack.
                let items = m.pop_n(2)?;
                let (Value::Str(module), Value::Str(name)) = (&items[0], &items[1]) else { bail!("STACK_GLOBAL without two strings") };
                match global(module, name) {
                    Some(g) => m.stack.push(Value::Global(g)),
                    None => bail!("refuses the global `{module}.{name}`: only tensors are read (a pickle can run code)"),
                }
            }
            b'R' => {
                let args = m.pop()?;
                let func = m.pop()?;
                let (Value::Global(g), Value::Tuple(args)) = (func, args) else {
                    bail!("REDUCE of something that is not an allowed global (byte {at})")
                };
                let v = reduce(g, args)?;
                m.stack.push(v)
            }
            b'Q' => {
                let pid = m.pop()?;
                let v = persistent(pid)?;
                m.stack.push(v)
            }
            b'b' => {
                // BUILD: an OrderedDict's state (the state dict's `_metadata`) carries no tensor.
                let _state = m.pop()?;
                if !matches!(m.top()?, Value::Dict(_)) {
                    bail!("BUILD on something that is not a dict (byte {at})");
                }
            }
            _ => bail!("unsupported pickle opcode 0x{op:02x} at byte {at}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values() {
        // {'a': (1, -2, 300, True), 'b': [None, 'x']} pickled with protocol 2.
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01(K\x01J\xfe\xff\xff\xffM,\x01\x88tq\x02X\x01\x00\x00\x00bq\x03]q\x04(NX\x01\x00\x00\x00xq\x05eu.";
        let v = load(p).unwrap();
        let want = Value::Dict(vec![
            (Value::Str("a".into()), Value::Tuple(vec![Value::Int(1), Value::Int(-2), Value::Int(300), Value::Bool(true)])),
            (Value::Str("b".into()), Value::List(vec![Value::None, Value::Str("x".into())])),
        ]);
        assert_eq!(v, want);
    }

    #[test]
    fn foreign_globals_and_unknown_opcodes_are_refused() {
        let e = load(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueR.").unwrap_err().to_string();
        assert!(e.contains("refuses the global `os.system`"), "{e}");
        let e = load(b"\x80\x02\x01.").unwrap_err().to_string();
        assert!(e.contains("unsupported pickle opcode 0x01"), "{e}");
        let e = load(b"\x80\x02}X\x05\x00\x00").unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        // A list fetched and nested in itself 40 times would hold 2^40 values.
        let mut bomb = b"\x80\x02]q\x00".to_vec();
        for _ in 0..40 {
            bomb.extend_from_slice(b"h\x00h\x00\x86q\x00");
        }
        bomb.push(b'.');
        let e = load(&bomb).unwrap_err().to_string();
        assert!(e.contains("expand far beyond"), "{e}");
    }
}
