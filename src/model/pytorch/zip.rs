//! The part of the zip format `torch.save` writes (since PyTorch 1.6): uncompressed ("stored")
//! entries, found through the central directory (zip64 included, for files over 4 GB), each one
//! read on demand with its CRC-32 checked. Anything else (compression, encryption, a directory
//! that points outside the file) is an error naming the file.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// One entry of the central directory.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// Offset of the entry's local header.
    header: u64,
    size: u64,
    crc: u32,
}

pub struct Zip {
    file: File,
    /// The file's name, for errors.
    pub name: String,
    len: u64,
    pub entries: HashMap<String, Entry>,
}

const EOCD: u32 = 0x0605_4b50;
const EOCD64: u32 = 0x0606_4b50;
const EOCD64_LOCATOR: u32 = 0x0706_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const LOCAL: u32 = 0x0403_4b50;

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().unwrap())
}

impl Zip {
    pub fn open(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let file = File::open(path).with_context(|| format!("{name}: cannot open"))?;
        let len = file.metadata().with_context(|| format!("{name}: cannot read"))?.len();
        let mut zip = Zip { file, name, len, entries: HashMap::new() };
        let mut magic = [0u8; 4];
        let head = zip.file.read(&mut magic).with_context(|| format!("{}: cannot read", zip.name))?;
        if head < 4 || u32::from_le_bytes(magic) != LOCAL {
            if head >= 2 && magic[0] == 0x80 && magic[1] <= 5 {
                bail!(
                    "{}: the legacy torch.save format (before PyTorch 1.6) is not supported; load and save it again with \
                     a recent PyTorch (torch.save writes the zip format)",
                    zip.name
                );
            }
            bail!("{}: not a PyTorch checkpoint (not a zip archive)", zip.name);
        }
        let (count, dir_offset, dir_size) = zip.end_of_directory()?;
        let dir = zip.read_at(dir_offset, dir_size, "the central directory")?;
        zip.entries = zip.parse_directory(&dir, count)?;
        Ok(zip)
    }

    fn corrupt(&self, what: &str) -> anyhow::Error {
        anyhow::anyhow!("{}: not a valid zip archive (truncated or corrupt?): {what}", self.name)
    }

    fn read_at(&mut self, offset: u64, n: u64, what: &str) -> Result<Vec<u8>> {
        if offset.checked_add(n).is_none_or(|end| end > self.len) {
            return Err(self.corrupt(&format!("{what} lies past the end of the file")));
        }
        let mut buf = vec![0u8; n as usize];
        self.file.seek(SeekFrom::Start(offset)).with_context(|| format!("{}: cannot read", self.name))?;
        self.file.read_exact(&mut buf).with_context(|| format!("{}: cannot read {what}", self.name))?;
        Ok(buf)
    }

    /// (entries, offset and size of the central directory), from the end-of-directory record
    /// and, where a field overflows, its zip64 counterpart.
    fn end_of_directory(&mut self) -> Result<(u64, u64, u64)> {
        let tail_len = self.len.min(22 + 65535);
        let tail = self.read_at(self.len - tail_len, tail_len, "the end of the archive")?;
        let at = (0..tail.len().saturating_sub(21))
            .rev()
            .find(|&i| u32_at(&tail, i) == EOCD)
            .ok_or_else(|| self.corrupt("no end-of-directory record"))?;
        let eocd = &tail[at..];
        let (mut count, mut size, mut offset) = (u16_at(eocd, 10) as u64, u32_at(eocd, 12) as u64, u32_at(eocd, 16) as u64);
        if count == 0xFFFF || size == 0xFFFF_FFFF || offset == 0xFFFF_FFFF {
            let loc_at = at.checked_sub(20).ok_or_else(|| self.corrupt("no zip64 end-of-directory locator"))?;
            if u32_at(&tail, loc_at) != EOCD64_LOCATOR {
                return Err(self.corrupt("no zip64 end-of-directory locator"));
            }
            let rec = self.read_at(u64_at(&tail, loc_at + 8), 56, "the zip64 end-of-directory record")?;
            if u32_at(&rec, 0) != EOCD64 {
                return Err(self.corrupt("bad zip64 end-of-directory record"));
            }
            (count, size, offset) = (u64_at(&rec, 32), u64_at(&rec, 40), u64_at(&rec, 48));
        }
        Ok((count, offset, size))
    }

    fn parse_directory(&self, dir: &[u8], count: u64) -> Result<HashMap<String, Entry>> {
        let mut entries = HashMap::new();
        let mut i = 0usize;
        for _ in 0..count {
            if i + 46 > dir.len() || u32_at(dir, i) != CENTRAL {
                return Err(self.corrupt("bad central directory entry"));
            }
            let (flags, method) = (u16_at(dir, i + 8), u16_at(dir, i + 10));
            let crc = u32_at(dir, i + 16);
            let (mut csize, mut size) = (u32_at(dir, i + 20) as u64, u32_at(dir, i + 24) as u64);
            let (name_len, extra_len, comment_len) =
                (u16_at(dir, i + 28) as usize, u16_at(dir, i + 30) as usize, u16_at(dir, i + 32) as usize);
            let mut header = u32_at(dir, i + 42) as u64;
            let end = i + 46 + name_len + extra_len + comment_len;
            if end > dir.len() {
                return Err(self.corrupt("bad central directory entry"));
            }
            let name = String::from_utf8_lossy(&dir[i + 46..i + 46 + name_len]).into_owned();
            // The zip64 extra field holds, in this order, the fields that overflowed.
            let mut extra = &dir[i + 46 + name_len..i + 46 + name_len + extra_len];
            while extra.len() >= 4 {
                let (id, n) = (u16_at(extra, 0), u16_at(extra, 2) as usize);
                let body = extra.get(4..4 + n).ok_or_else(|| self.corrupt(&format!("entry `{name}`: bad extra field")))?;
                if id == 1 {
                    let mut fields = body.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap()));
                    for v in [&mut size, &mut csize, &mut header] {
                        if *v == 0xFFFF_FFFF {
                            *v = fields.next().ok_or_else(|| self.corrupt(&format!("entry `{name}`: short zip64 field")))?;
                        }
                    }
                }
                extra = &extra[4 + n..];
            }
            if flags & 1 != 0 {
                bail!("{}: entry `{name}` is encrypted", self.name);
            }
            if method != 0 || csize != size {
                bail!("{}: entry `{name}` is compressed (method {method}); torch.save stores its entries uncompressed", self.name);
            }
            entries.insert(name, Entry { header, size, crc });
            i = end;
        }
        Ok(entries)
    }

    /// The bytes of entry `name` (checked against its CRC-32).
    pub fn read(&mut self, name: &str) -> Result<Vec<u8>> {
        let e = *self.entries.get(name).with_context(|| format!("{}: no entry `{name}` in the archive", self.name))?;
        let local = self.read_at(e.header, 30, &format!("entry `{name}`"))?;
        if u32_at(&local, 0) != LOCAL {
            return Err(self.corrupt(&format!("entry `{name}`: bad local header")));
        }
        let start = e.header + 30 + u16_at(&local, 26) as u64 + u16_at(&local, 28) as u64;
        let data = self.read_at(start, e.size, &format!("entry `{name}`"))?;
        if crc32(&data) != e.crc {
            return Err(self.corrupt(&format!("entry `{name}` fails its CRC-32 check")));
        }
        Ok(data)
    }

    pub fn size(&self, name: &str) -> Option<u64> {
        self.entries.get(name).map(|e| e.size)
    }
}

/// CRC-32 (IEEE 802.3, reflected), as zip uses it.
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, v) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *v = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8))
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32_known_answer() {
        assert_eq!(super::crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(super::crc32(b""), 0);
    }
}
