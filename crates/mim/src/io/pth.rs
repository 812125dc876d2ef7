//! PyTorch `.pth` files, read without running them.
//!
//! `torch.save` writes a zip archive: `NAME/data.pkl`, a pickle of the saved
//! object, and `NAME/data/K`, the raw bytes of each tensor storage `K`. A
//! pickle is a program for a small stack machine whose `GLOBAL` and `REDUCE`
//! opcodes import and call any Python function: `torch.load` of an untrusted
//! file can run anything. This reader is a machine of its own that knows
//! exactly what `torch.save` writes for a state dict and refuses everything
//! else, naming the global it met:
//!
//! ```text
//! containers   dict, list, tuple (and the opcodes that fill them), collections.OrderedDict
//! scalars      None, bool, int, float, str, bytes
//! objects      argparse.Namespace (MAE stores its args so): its fields, as a dict
//! tensors      torch._utils._rebuild_tensor_v2(storage, offset, size, stride, …)
//!              torch._utils._rebuild_parameter(tensor, …)
//! storages     persistent id ('storage', torch.{Float,Half,BFloat16,Double,Long,Int}Storage,
//!              key, location, numel) → NAME/data/key
//! ```
//!
//! Each tensor is checked against its storage (the storage's byte length is
//! its numel times the element size; the furthest element the sizes and
//! strides reach lies inside it) before anything is allocated, then
//! gathered by its strides and widened to f32. The state dict inside the
//! saved object is found, not guessed: the object itself if its values are
//! tensors, else its `model`, `state_dict` or `module` entry (one level
//! down again if needed). Integer tensors (PyTorch's index buffers) come
//! back marked as such; [`TensorFile::load`] skips the ones Tessera computes
//! itself, as in safetensors files.
//!
//! [`TensorFile::load`]: crate::io::safetensors::TensorFile::load

use crate::error::{Result, ckpt_err};
use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::path::Path;

/// Whether `bytes` are a zip archive (a `.pth` of `torch.save` ≥ 1.6).
pub fn is_pth(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// The element types of the storages read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dtype {
    F32,
    F16,
    Bf16,
    F64,
    I64,
    I32,
}

impl Dtype {
    fn size(self) -> usize {
        match self {
            Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F64 | Dtype::I64 => 8,
        }
    }

    fn is_float(self) -> bool {
        !matches!(self, Dtype::I64 | Dtype::I32)
    }

    /// Element `i` of little-endian `bytes`, as f32.
    fn read(self, bytes: &[u8], i: usize) -> f32 {
        let at = |n: usize| &bytes[i * n..(i + 1) * n];
        match self {
            Dtype::F32 => f32::from_le_bytes(at(4).try_into().expect("4 bytes")),
            Dtype::F16 => f16_to_f32(u16::from_le_bytes(at(2).try_into().expect("2 bytes"))),
            Dtype::Bf16 => f32::from_bits(u32::from(u16::from_le_bytes(at(2).try_into().expect("2 bytes"))) << 16),
            Dtype::F64 => f64::from_le_bytes(at(8).try_into().expect("8 bytes")) as f32,
            Dtype::I64 => i64::from_le_bytes(at(8).try_into().expect("8 bytes")) as f32,
            Dtype::I32 => i32::from_le_bytes(at(4).try_into().expect("4 bytes")) as f32,
        }
    }
}

/// IEEE half precision to single (exact: every f16 is an f32).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: normalise the fraction.
            let shift = f.leading_zeros() - 21; // bits above the 10-bit field
            let f = (f << shift) & 0x3ff;
            sign | ((127 - 15 + 1 - shift) << 23) | (f << 13)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// The functions and classes a state-dict pickle may name.
#[derive(Clone, Debug, PartialEq)]
enum Global {
    OrderedDict,
    Namespace,
    RebuildTensor,
    RebuildParameter,
    Storage(Dtype),
}

/// A tensor as the pickle describes it: where its values are, and how to
/// walk them.
#[derive(Clone, Debug, PartialEq)]
struct TensorRef {
    dtype: Dtype,
    key: String,
    numel: usize,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// A value of the restricted pickle machine.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage { dtype: Dtype, key: String, numel: usize },
    Tensor(TensorRef),
    Mark,
}

/// Largest memo index and stack the machine accepts (a bound on memory
/// whatever the file says).
const MAX_MEMO: usize = 1 << 24;

/// One tensor of a state dict, widened to f32.
#[derive(Clone, Debug, PartialEq)]
pub struct PthTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    /// Stored as integers (an index buffer), not floating point.
    pub integer: bool,
}

/// Reads a `.pth` archive's state dict, in storage order (`path` names it
/// in errors).
pub fn read(bytes: &[u8], path: &Path) -> Result<Vec<PthTensor>> {
    let bad = |msg: String| ckpt_err(path, msg);
    let mut zip =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| bad(format!("not a readable .pth archive ({e})")))?;
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    let pkl = names
        .iter()
        .find(|n| n.ends_with("/data.pkl") || n.as_str() == "data.pkl")
        .ok_or_else(|| bad("is a zip archive without data.pkl: not a torch.save file".into()))?
        .clone();
    let prefix = pkl.strip_suffix("data.pkl").unwrap_or_default().to_string();
    if let Some(order) = names.iter().find(|n| **n == format!("{prefix}byteorder")) {
        let text = read_entry(&mut zip, order, 16, path)?;
        if text != b"little" {
            return Err(bad(format!(
                "stores its tensors {} endian; only little endian is read",
                String::from_utf8_lossy(&text)
            )));
        }
    }
    let program = read_entry(&mut zip, &pkl, 1 << 30, path)?;
    let object = Machine::default()
        .run(&program)
        .map_err(|e| bad(format!("data.pkl: {e}")))?;
    let dict = state_dict(&object).ok_or_else(|| {
        bad("holds no state dict (a dict of tensors, at the top or under 'model', 'state_dict' or 'module')".into())
    })?;
    // Tensors grouped by storage (views of one storage are rare but legal),
    // so that one storage's bytes are held at a time, not the whole file's.
    let mut tensors: Vec<(&String, &TensorRef)> = dict
        .iter()
        .filter_map(|(k, v)| match (k, v) {
            (Value::Str(name), Value::Tensor(t)) => Some((name, t)),
            _ => None,
        })
        .collect();
    tensors.sort_by(|a, b| a.1.key.cmp(&b.1.key));
    let mut out = Vec::with_capacity(tensors.len());
    let mut current: Option<(&str, Vec<u8>)> = None;
    for (name, t) in tensors {
        if current.as_ref().is_none_or(|(key, _)| *key != t.key) {
            drop(current.take()); // the previous storage's bytes go first
            let entry = format!("{prefix}data/{}", t.key);
            let want = t
                .numel
                .checked_mul(t.dtype.size())
                .ok_or_else(|| bad(format!("tensor '{name}': storage too large")))?;
            if !names.contains(&entry) {
                return Err(bad(format!("tensor '{name}': its storage {entry} is missing")));
            }
            let data = read_entry(&mut zip, &entry, want, path)?;
            if data.len() != want {
                return Err(bad(format!(
                    "tensor '{name}': storage {entry} holds {} bytes, its header says {want}",
                    data.len()
                )));
            }
            current = Some((&t.key, data));
        }
        let storage = &current.as_ref().expect("loaded above").1;
        let data = gather(t, storage).map_err(|e| bad(format!("tensor '{name}': {e}")))?;
        out.push(PthTensor {
            name: name.clone(),
            shape: t.size.clone(),
            data,
            integer: !t.dtype.is_float(),
        });
    }
    if out.is_empty() {
        return Err(bad("holds a state dict without tensors".into()));
    }
    Ok(out)
}

/// The bytes of one archive entry, refusing more than `limit`.
fn read_entry(zip: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str, limit: usize, path: &Path) -> Result<Vec<u8>> {
    let mut f = zip.by_name(name).map_err(|e| ckpt_err(path, format!("{name}: {e}")))?;
    if f.size() > limit as u64 {
        return Err(ckpt_err(
            path,
            format!("{name} holds {} bytes, more than the {limit} expected", f.size()),
        ));
    }
    let mut out = Vec::with_capacity(f.size() as usize);
    f.by_ref()
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ckpt_err(path, format!("{name}: {e}")))?;
    Ok(out)
}

/// The tensor's values in row-major order, walked from its storage by its
/// sizes and strides, checked to stay inside the storage first.
fn gather(t: &TensorRef, storage: &[u8]) -> std::result::Result<Vec<f32>, String> {
    if t.size.len() != t.stride.len() {
        return Err(format!("{} sizes but {} strides", t.size.len(), t.stride.len()));
    }
    let count = t
        .size
        .iter()
        .try_fold(1usize, |a, &s| a.checked_mul(s))
        .ok_or("too many values")?;
    if count == 0 {
        return Ok(Vec::new());
    }
    // The furthest element: offset + Σ (size − 1)·stride.
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |a, (&s, &st)| {
            (s - 1).checked_mul(st).and_then(|x| a.checked_add(x))
        })
        .ok_or("sizes and strides overflow")?;
    if last >= t.numel {
        return Err(format!(
            "sizes {:?} and strides {:?} from offset {} reach element {last}, past the storage's {}",
            t.size, t.stride, t.offset, t.numel
        ));
    }
    let mut out = Vec::with_capacity(count);
    let mut index = vec![0usize; t.size.len()];
    for _ in 0..count {
        let at = t.offset + index.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
        out.push(t.dtype.read(storage, at));
        // Next index, last axis fastest.
        for ax in (0..index.len()).rev() {
            index[ax] += 1;
            if index[ax] < t.size[ax] {
                break;
            }
            index[ax] = 0;
        }
    }
    Ok(out)
}

/// The entries of the state dict inside a saved object (see the module docs).
fn state_dict(v: &Value) -> Option<&[(Value, Value)]> {
    let Value::Dict(items) = v else { return None };
    if items.iter().any(|(_, x)| matches!(x, Value::Tensor(_))) {
        return Some(items);
    }
    for key in ["model", "state_dict", "module"] {
        if let Some((_, inner)) = items.iter().find(|(k, _)| *k == Value::Str(key.into()))
            && let Some(found) = state_dict(inner)
        {
            return Some(found);
        }
    }
    None
}

/// The restricted pickle machine: a stack, marks and a memo.
#[derive(Default)]
struct Machine {
    stack: Vec<Value>,
    memo: BTreeMap<usize, Value>,
}

impl Machine {
    fn run(mut self, code: &[u8]) -> std::result::Result<Value, String> {
        let mut r = Reader { code, at: 0 };
        loop {
            let op = r.u8()?;
            match op {
                0x80 => {
                    let v = r.u8()?; // PROTO
                    if v > 5 {
                        return Err(format!("pickle protocol {v} is not one torch.save writes"));
                    }
                }
                0x95 => {
                    r.take(8)?; // FRAME: a length hint
                }
                b'.' => return self.pop(), // STOP
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b'(' => self.stack.push(Value::Mark),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let v = r.u8()?;
                    self.stack.push(Value::Int(i64::from(v)))
                }
                b'M' => {
                    let v = u16::from_le_bytes(r.array()?);
                    self.stack.push(Value::Int(i64::from(v)))
                }
                b'J' => {
                    let v = i32::from_le_bytes(r.array()?);
                    self.stack.push(Value::Int(i64::from(v)))
                }
                0x8a => {
                    // LONG1: a little-endian two's-complement integer of n bytes.
                    let n = r.u8()? as usize;
                    let b = r.take(n)?;
                    if n > 8 {
                        return Err("an integer wider than 64 bits".into());
                    }
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= i64::from(x) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v))
                }
                b'G' => {
                    let v = f64::from_be_bytes(r.array()?);
                    self.stack.push(Value::Float(v))
                }
                b'X' => {
                    let n = u32::from_le_bytes(r.array()?) as usize;
                    let s = r.text(n)?;
                    self.stack.push(Value::Str(s))
                }
                0x8c => {
                    let n = r.u8()? as usize;
                    let s = r.text(n)?;
                    self.stack.push(Value::Str(s))
                }
                0x8d => {
                    let n = usize::try_from(u64::from_le_bytes(r.array()?)).map_err(|_| "a string too long")?;
                    let s = r.text(n)?;
                    self.stack.push(Value::Str(s))
                }
                b'C' => {
                    let n = r.u8()? as usize;
                    let b = r.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b))
                }
                b'B' => {
                    let n = u32::from_le_bytes(r.array()?) as usize;
                    let b = r.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b))
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize; // TUPLE1..3
                    if self.stack.len() < n {
                        return Err("a tuple of more items than the stack holds".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items))
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items))
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    self.stack.push(Value::Dict(pairs))
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.stack.last_mut() {
                        Some(Value::List(l)) => l.push(v),
                        _ => return Err("APPEND to something that is not a list".into()),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.stack.last_mut() {
                        Some(Value::List(l)) => l.extend(items),
                        _ => return Err("APPENDS to something that is not a list".into()),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![(k, v)])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let p = pairs(items)?;
                    self.set_items(p)?
                }
                b'q' => {
                    let i = r.u8()? as usize;
                    self.put(i)?
                }
                b'r' => {
                    let i = u32::from_le_bytes(r.array()?) as usize;
                    self.put(i)?
                }
                0x94 => {
                    let i = self.memo.len();
                    self.put(i)? // MEMOIZE
                }
                b'h' => {
                    let i = r.u8()? as usize;
                    self.get(i)?
                }
                b'j' => {
                    let i = u32::from_le_bytes(r.array()?) as usize;
                    self.get(i)?
                }
                b'c' => {
                    let module = r.line()?;
                    let name = r.line()?;
                    self.stack.push(Value::Global(global(&module, &name)?))
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(m), Value::Str(n)) = (module, name) else {
                        return Err("STACK_GLOBAL of something that is not two strings".into());
                    };
                    self.stack.push(Value::Global(global(&m, &n)?))
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(storage(pid)?)
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let Value::Tuple(args) = args else {
                        return Err("REDUCE with arguments that are not a tuple".into());
                    };
                    self.stack.push(call(f, args)?)
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args)
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    match cls {
                        Value::Global(Global::Namespace) => self.stack.push(Value::Dict(Vec::new())),
                        Value::Global(Global::OrderedDict) => self.stack.push(Value::Dict(Vec::new())),
                        other => return Err(format!("NEWOBJ of {other:?}")),
                    }
                }
                b'b' => {
                    // BUILD: a Namespace (an empty dict here) takes its fields.
                    let state = self.pop()?;
                    match (self.stack.last_mut(), state) {
                        (Some(Value::Dict(d)), Value::Dict(fields)) if d.is_empty() => *d = fields,
                        (Some(Value::Tensor(_) | Value::Dict(_)), _) => {} // hooks or empty state
                        _ => return Err("BUILD of an object that is not a Namespace".into()),
                    }
                }
                other => {
                    return Err(format!(
                        "opcode 0x{other:02x} at byte {} is not one a state dict needs",
                        r.at - 1
                    ));
                }
            }
            if self.stack.len() > MAX_MEMO {
                return Err("a stack deeper than any state dict needs".into());
            }
        }
    }

    fn pop(&mut self) -> std::result::Result<Value, String> {
        match self.stack.pop() {
            Some(Value::Mark) | None => Err("the stack ran out".into()),
            Some(v) => Ok(v),
        }
    }

    fn pop_mark(&mut self) -> std::result::Result<Vec<Value>, String> {
        let at = self
            .stack
            .iter()
            .rposition(|v| *v == Value::Mark)
            .ok_or("no MARK to collect items from")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn set_items(&mut self, items: Vec<(Value, Value)>) -> std::result::Result<(), String> {
        match self.stack.last_mut() {
            Some(Value::Dict(d)) => {
                d.extend(items);
                Ok(())
            }
            _ => Err("SETITEM on something that is not a dict".into()),
        }
    }

    fn put(&mut self, i: usize) -> std::result::Result<(), String> {
        if i > MAX_MEMO {
            return Err(format!("memo index {i} past any state dict's"));
        }
        let top = self.stack.last().ok_or("MEMOIZE of nothing")?.clone();
        self.memo.insert(i, top);
        Ok(())
    }

    fn get(&mut self, i: usize) -> std::result::Result<(), String> {
        let v = self
            .memo
            .get(&i)
            .ok_or_else(|| format!("memo index {i} was never stored"))?
            .clone();
        self.stack.push(v);
        Ok(())
    }
}

/// Key/value pairs from a flat list.
fn pairs(items: Vec<Value>) -> std::result::Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("a dict of an odd number of items".into());
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// The globals a state dict may name; anything else is refused by name.
fn global(module: &str, name: &str) -> std::result::Result<Global, String> {
    Ok(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("argparse", "Namespace") => Global::Namespace,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch", "FloatStorage") => Global::Storage(Dtype::F32),
        ("torch", "HalfStorage") => Global::Storage(Dtype::F16),
        ("torch", "BFloat16Storage") => Global::Storage(Dtype::Bf16),
        ("torch", "DoubleStorage") => Global::Storage(Dtype::F64),
        ("torch", "LongStorage") => Global::Storage(Dtype::I64),
        ("torch", "IntStorage") => Global::Storage(Dtype::I32),
        _ => {
            return Err(format!(
                "refuses the global {module}.{name}: a state dict needs none, and calling it could run anything"
            ));
        }
    })
}

/// A persistent id: `('storage', torch.XStorage, key, location, numel)`.
fn storage(pid: Value) -> std::result::Result<Value, String> {
    let Value::Tuple(t) = pid else {
        return Err("a persistent id that is not a tuple".into());
    };
    match t.as_slice() {
        [
            Value::Str(kind),
            Value::Global(Global::Storage(dtype)),
            Value::Str(key),
            _,
            Value::Int(numel),
        ] if kind == "storage" && *numel >= 0 => Ok(Value::Storage {
            dtype: *dtype,
            key: key.clone(),
            numel: *numel as usize,
        }),
        _ => Err(format!("a persistent id that is not a storage: {t:?}")),
    }
}

/// `f(*args)` for the callables allowed.
fn call(f: Value, args: Vec<Value>) -> std::result::Result<Value, String> {
    let usize_of = |v: &Value| match v {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        other => Err(format!("{other:?} is not a size")),
    };
    let sizes = |v: &Value| match v {
        Value::Tuple(t) => t.iter().map(usize_of).collect::<std::result::Result<Vec<_>, _>>(),
        other => Err(format!("{other:?} is not a tuple of sizes")),
    };
    match f {
        Value::Global(Global::OrderedDict) => Ok(Value::Dict(Vec::new())),
        Value::Global(Global::RebuildTensor) => match args.as_slice() {
            [Value::Storage { dtype, key, numel }, offset, size, stride, ..] => Ok(Value::Tensor(TensorRef {
                dtype: *dtype,
                key: key.clone(),
                numel: *numel,
                offset: usize_of(offset)?,
                size: sizes(size)?,
                stride: sizes(stride)?,
            })),
            _ => Err("_rebuild_tensor_v2 without (storage, offset, size, stride)".into()),
        },
        Value::Global(Global::RebuildParameter) => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            _ => Err("_rebuild_parameter of something that is not a tensor".into()),
        },
        other => Err(format!("a call of {other:?}, which a state dict never makes")),
    }
}

/// A cursor over the pickle's bytes.
struct Reader<'a> {
    code: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> std::result::Result<&[u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.code.len())
            .ok_or("the pickle ends early")?;
        let s = &self.code[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn text(&mut self, n: usize) -> std::result::Result<String, String> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "a string that is not UTF-8".into())
    }

    /// A newline-terminated line (GLOBAL's operands).
    fn line(&mut self) -> std::result::Result<String, String> {
        let rest = &self.code[self.at..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or("the pickle ends early")?;
        let s = self.text(n)?;
        self.at += 1;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_widen_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3e00), 1.5);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24), "smallest subnormal");
        assert_eq!(f16_to_f32(0x03ff), 1023.0 * 2f32.powi(-24), "largest subnormal");
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert!(f16_to_f32(0x7c00).is_infinite() && f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), 0x8000_0000, "negative zero");
    }

    /// What `pickle.dumps` of `os.system` calls looks like: refused by name.
    #[test]
    fn code_is_refused_by_name() {
        for (module, name) in [
            ("os", "system"),
            ("builtins", "eval"),
            ("torch", "load"),
            ("posix", "system"),
        ] {
            let mut p = vec![0x80, 2, b'c'];
            p.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
            p.extend_from_slice(b"X\x02\x00\x00\x00ls\x85R.");
            let e = Machine::default().run(&p).unwrap_err();
            assert!(e.contains(&format!("{module}.{name}")), "{e}");
        }
    }

    #[test]
    fn strides_are_checked_before_anything_is_read() {
        let t = TensorRef {
            dtype: Dtype::F32,
            key: "0".into(),
            numel: 6,
            offset: 0,
            size: vec![3, 2],
            stride: vec![1, 3],
        };
        let storage: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        assert_eq!(
            gather(&t, &storage).unwrap(),
            [0.0, 3.0, 1.0, 4.0, 2.0, 5.0],
            "a transposed view"
        );
        let past = TensorRef { offset: 1, ..t.clone() };
        assert!(gather(&past, &storage).unwrap_err().contains("past the storage"));
        let huge = TensorRef {
            size: vec![usize::MAX, 2],
            ..t
        };
        assert!(gather(&huge, &storage).is_err());
    }
}
