//! Types that can travel in messages, the buffers that hold them, and datatypes: the layout
//! descriptions (`MPI_Datatype`) of predefined and derived types.
//!
//! A [`Datatype`] is a typemap: a sequence of (byte displacement, primitive) pairs, stored
//! as runs of equal consecutive primitives, with a lower bound and an extent. Derived
//! constructors ([`Datatype::contiguous`], [`Datatype::vector`], [`Datatype::structure`], ...)
//! build new typemaps from old ones exactly as MPI defines them; [`Datatype::pack_into`] and
//! [`Datatype::unpack_from`] move data between a layout and its packed form. [`View`] and
//! [`MutView`] send and receive non-contiguous layouts (packed through a temporary; a
//! contiguous layout is sent from the user's memory directly).
//!
//! # Standard section(s)
//! MPI-4.1 §3.2.2 (message data), §5.1 (derived datatypes), §5.1.11 (`MPI_Get_elements`),
//! §5.2 (pack and unpack).
//!
//! # Not yet implemented
//! `MPI_Type_create_subarray`/`darray`, external32 packing, `bool`/`char`/complex as
//! predefined types (their values are not valid for every bit pattern), nonblocking receives
//! into a [`MutView`].

use std::any::TypeId;
use std::borrow::Cow;
use std::sync::Arc;

use crate::error::Error;

/// A type whose values can be sent as their bytes and received from any bytes.
///
/// Derive it for structs of `Equivalence` fields with `#[derive(braid::Equivalence)]`.
///
/// # Safety
/// The type must be plain old data: no padding bytes, no pointers, and every bit pattern of
/// its size must be a valid value.
pub unsafe trait Equivalence: Copy + 'static {
    /// The datatype describing the layout of one value (`MPI_Type_match_size`-like). The
    /// default is an opaque run of bytes, on which no predefined reduction is defined.
    fn equivalent_datatype() -> Datatype {
        Datatype::opaque(size_of::<Self>())
    }
}

/// A predefined primitive datatype, in MPI's order of C types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Primitive {
    /// `MPI_INT8_T`.
    I8,
    /// `MPI_UINT8_T` (also `MPI_BYTE` for opaque data).
    U8,
    /// `MPI_INT16_T`.
    I16,
    /// `MPI_UINT16_T`.
    U16,
    /// `MPI_INT32_T`.
    I32,
    /// `MPI_UINT32_T`.
    U32,
    /// `MPI_INT64_T`.
    I64,
    /// `MPI_UINT64_T`.
    U64,
    /// 128-bit signed integer (no MPI name).
    I128,
    /// 128-bit unsigned integer (no MPI name).
    U128,
    /// `MPI_AINT`-sized signed integer.
    Isize,
    /// `MPI_AINT`-sized unsigned integer.
    Usize,
    /// `MPI_FLOAT`.
    F32,
    /// `MPI_DOUBLE`.
    F64,
}

impl Primitive {
    /// Size in bytes.
    pub fn size(self) -> usize {
        match self {
            Self::I8 | Self::U8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::I64 | Self::U64 | Self::F64 => 8,
            Self::I128 | Self::U128 => 16,
            Self::Isize | Self::Usize => size_of::<usize>(),
        }
    }

    /// The MPI name (or the Rust one where MPI has none).
    pub fn name(self) -> &'static str {
        match self {
            Self::I8 => "MPI_INT8_T",
            Self::U8 => "MPI_UINT8_T",
            Self::I16 => "MPI_INT16_T",
            Self::U16 => "MPI_UINT16_T",
            Self::I32 => "MPI_INT32_T",
            Self::U32 => "MPI_UINT32_T",
            Self::I64 => "MPI_INT64_T",
            Self::U64 => "MPI_UINT64_T",
            Self::I128 => "i128",
            Self::U128 => "u128",
            Self::Isize => "MPI_AINT",
            Self::Usize => "usize",
            Self::F32 => "MPI_FLOAT",
            Self::F64 => "MPI_DOUBLE",
        }
    }

    /// The primitive of Rust type `T`.
    ///
    /// # Panics
    /// If `T` is not a primitive number type (a bug in the caller).
    pub fn of<T: 'static>() -> Self {
        let t = TypeId::of::<T>();
        macro_rules! pick { ($($ty:ty => $p:ident),*) => {
            $( if t == TypeId::of::<$ty>() { return Self::$p; } )*
        } }
        pick!(i8 => I8, u8 => U8, i16 => I16, u16 => U16, i32 => I32, u32 => U32, i64 => I64,
              u64 => U64, i128 => I128, u128 => U128, isize => Isize, usize => Usize,
              f32 => F32, f64 => F64);
        panic!("{} is not a primitive type", std::any::type_name::<T>())
    }
}

macro_rules! equivalence {
    ($($t:ty),*) => { $(
        // SAFETY: primitive integers and floats have no padding and accept every bit pattern.
        unsafe impl Equivalence for $t {
            fn equivalent_datatype() -> Datatype {
                Datatype::primitive(Primitive::of::<$t>())
            }
        }
    )* };
}
equivalence!(
    u8, i8, u16, i16, u32, i32, u64, i64, u128, i128, usize, isize, f32, f64
);

// SAFETY: arrays of plain old data are plain old data.
unsafe impl<T: Equivalence, const N: usize> Equivalence for [T; N] {
    fn equivalent_datatype() -> Datatype {
        Datatype::contiguous(N, &T::equivalent_datatype())
    }
}

/// A run of `count` consecutive primitives of one kind at byte displacement `disp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seg {
    disp: i64,
    prim: Primitive,
    count: usize,
}

impl Seg {
    fn bytes(&self) -> usize {
        self.count * self.prim.size()
    }
    fn end(&self) -> i64 {
        self.disp + self.bytes() as i64
    }
}

/// A datatype (`MPI_Datatype`): predefined or derived. Cheap to clone; dropping the last
/// clone frees it (`MPI_Type_free`).
#[derive(Clone, Debug)]
pub struct Datatype {
    inner: Arc<TypeInner>,
}

#[derive(Clone, Debug)]
struct TypeInner {
    /// A name for error messages.
    name: String,
    /// The typemap in order, as runs. Invariant: no run has `count == 0`; adjacent runs of
    /// the same primitive that touch are merged.
    segs: Vec<Seg>,
    /// Lower bound and upper bound (`MPI_Type_get_extent`): extent = ub - lb.
    lb: i64,
    ub: i64,
    /// Number of bytes of data (`MPI_Type_size`).
    size: usize,
    /// Built by [`Datatype::opaque`]: bytes with no element type, so no predefined reduction.
    opaque: bool,
    /// `MPI_Type_commit` was called (predefined types are born committed).
    committed: bool,
    /// A MINLOC/MAXLOC pair type: only those operations apply to it.
    pair: bool,
}

impl PartialEq for Datatype {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
            || (self.inner.segs == other.inner.segs
                && self.inner.lb == other.inner.lb
                && self.inner.ub == other.inner.ub
                && self.inner.opaque == other.inner.opaque)
    }
}

/// One block of a derived type: `count` copies of `ty` from byte displacement `disp`.
struct Block<'a> {
    disp: i64,
    count: usize,
    ty: &'a Datatype,
}

fn push_seg(segs: &mut Vec<Seg>, s: Seg) {
    if s.count == 0 {
        return;
    }
    if let Some(last) = segs.last_mut()
        && last.prim == s.prim
        && last.end() == s.disp
    {
        last.count += s.count;
        return;
    }
    segs.push(s);
}

impl Datatype {
    /// The predefined datatype of primitive `p`.
    pub fn primitive(p: Primitive) -> Self {
        Self::leaf(p.name().to_string(), p, 1, false)
    }

    /// `n` bytes with no element type (`MPI_BYTE` x n).
    pub fn opaque(n: usize) -> Self {
        Self::leaf(format!("opaque({n})"), Primitive::U8, n, true)
    }

    /// Datatype of a [`crate::collective::ValueIndex`] pair.
    pub(crate) fn pair(v: Primitive, i: Primitive) -> Self {
        let segs = vec![
            Seg {
                disp: 0,
                prim: v,
                count: 1,
            },
            Seg {
                disp: v.size() as i64,
                prim: i,
                count: 1,
            },
        ];
        let size = v.size() + i.size();
        Self {
            inner: Arc::new(TypeInner {
                name: format!("pair({}, {})", v.name(), i.name()),
                segs,
                lb: 0,
                ub: size as i64,
                size,
                opaque: false,
                committed: true,
                pair: true,
            }),
        }
    }

    fn leaf(name: String, p: Primitive, count: usize, opaque: bool) -> Self {
        let mut segs = Vec::new();
        push_seg(
            &mut segs,
            Seg {
                disp: 0,
                prim: p,
                count,
            },
        );
        Self {
            inner: Arc::new(TypeInner {
                name,
                segs,
                lb: 0,
                ub: (p.size() * count) as i64,
                size: p.size() * count,
                opaque,
                committed: true,
                pair: false,
            }),
        }
    }

    /// Builds a derived type from blocks, as MPI defines bounds: lb is the least and ub the
    /// greatest bound of any copy of any old type.
    fn from_blocks(name: String, blocks: &[Block<'_>]) -> Self {
        let mut segs = Vec::new();
        let (mut lb, mut ub) = (i64::MAX, i64::MIN);
        let mut size = 0usize;
        let mut opaque = false;
        for b in blocks {
            if b.count == 0 {
                continue;
            }
            let ext = b.ty.extent();
            for j in 0..b.count {
                let base = b.disp + j as i64 * ext;
                lb = lb.min(base + b.ty.inner.lb);
                ub = ub.max(base + b.ty.inner.ub);
                for s in &b.ty.inner.segs {
                    push_seg(
                        &mut segs,
                        Seg {
                            disp: base + s.disp,
                            ..*s
                        },
                    );
                }
            }
            size += b.count * b.ty.size();
            opaque |= b.ty.inner.opaque;
        }
        if lb > ub {
            (lb, ub) = (0, 0);
        }
        Self {
            inner: Arc::new(TypeInner {
                name,
                segs,
                lb,
                ub,
                size,
                opaque,
                committed: false,
                pair: false,
            }),
        }
    }

    /// `count` copies of `old`, one after the other (`MPI_Type_contiguous`).
    pub fn contiguous(count: usize, old: &Self) -> Self {
        let mut t = Self::from_blocks(
            format!("contiguous({count}, {})", old.name()),
            &[Block {
                disp: 0,
                count,
                ty: old,
            }],
        );
        Arc::make_mut(&mut t.inner).committed = old.inner.committed;
        t
    }

    /// `count` blocks of `blocklen` copies of `old`, block starts `stride` extents of `old`
    /// apart (`MPI_Type_vector`).
    pub fn vector(count: usize, blocklen: usize, stride: isize, old: &Self) -> Self {
        let s = stride as i64 * old.extent();
        let mut t = Self::hvector(count, blocklen, s as isize, old);
        Arc::make_mut(&mut t.inner).name =
            format!("vector({count}, {blocklen}, {stride}, {})", old.name());
        t
    }

    /// As [`Datatype::vector`] with the stride in bytes (`MPI_Type_create_hvector`).
    pub fn hvector(count: usize, blocklen: usize, stride_bytes: isize, old: &Self) -> Self {
        let blocks: Vec<Block<'_>> = (0..count)
            .map(|i| Block {
                disp: i as i64 * stride_bytes as i64,
                count: blocklen,
                ty: old,
            })
            .collect();
        Self::from_blocks(
            format!(
                "hvector({count}, {blocklen}, {stride_bytes}, {})",
                old.name()
            ),
            &blocks,
        )
    }

    /// Blocks of `blocklens[i]` copies of `old` at `displs[i]` extents of `old`
    /// (`MPI_Type_indexed`).
    ///
    /// # Errors
    /// [`Error::UsageDatatype`] when the slices differ in length.
    pub fn indexed(blocklens: &[usize], displs: &[isize], old: &Self) -> Result<Self, Error> {
        let ext = old.extent();
        let bytes: Vec<isize> = displs.iter().map(|d| (*d as i64 * ext) as isize).collect();
        let mut t = Self::hindexed(blocklens, &bytes, old)?;
        Arc::make_mut(&mut t.inner).name =
            format!("indexed({} blocks, {})", blocklens.len(), old.name());
        Ok(t)
    }

    /// As [`Datatype::indexed`] with byte displacements (`MPI_Type_create_hindexed`).
    ///
    /// # Errors
    /// [`Error::UsageDatatype`] when the slices differ in length.
    pub fn hindexed(blocklens: &[usize], displs: &[isize], old: &Self) -> Result<Self, Error> {
        if blocklens.len() != displs.len() {
            return Err(Error::UsageDatatype(format!(
                "{} block lengths for {} displacements",
                blocklens.len(),
                displs.len()
            )));
        }
        let blocks: Vec<Block<'_>> = (blocklens.iter().zip(displs))
            .map(|(c, d)| Block {
                disp: *d as i64,
                count: *c,
                ty: old,
            })
            .collect();
        Ok(Self::from_blocks(
            format!("hindexed({} blocks, {})", blocks.len(), old.name()),
            &blocks,
        ))
    }

    /// Blocks of `blocklen` copies of `old` at `displs[i]` extents (`MPI_Type_create_indexed_block`).
    pub fn indexed_block(blocklen: usize, displs: &[isize], old: &Self) -> Self {
        let lens = vec![blocklen; displs.len()];
        let mut t = Self::indexed(&lens, displs, old).unwrap_or_else(|_| Self::opaque(0));
        Arc::make_mut(&mut t.inner).name = format!(
            "indexed_block({blocklen}, {} blocks, {})",
            displs.len(),
            old.name()
        );
        t
    }

    /// Blocks of `blocklens[i]` copies of `types[i]` at byte displacement `displs[i]`
    /// (`MPI_Type_create_struct`).
    ///
    /// # Errors
    /// [`Error::UsageDatatype`] when the slices differ in length.
    pub fn structure(
        blocklens: &[usize],
        displs: &[isize],
        types: &[&Self],
    ) -> Result<Self, Error> {
        if blocklens.len() != displs.len() || displs.len() != types.len() {
            return Err(Error::UsageDatatype(format!(
                "struct with {} lengths, {} displacements, {} types",
                blocklens.len(),
                displs.len(),
                types.len()
            )));
        }
        let blocks: Vec<Block<'_>> = (0..types.len())
            .map(|i| Block {
                disp: displs[i] as i64,
                count: blocklens[i],
                ty: types[i],
            })
            .collect();
        Ok(Self::from_blocks(
            format!("struct({} blocks)", blocks.len()),
            &blocks,
        ))
    }

    /// `old` with lower bound `lb` and extent `extent` (`MPI_Type_create_resized`).
    pub fn resized(old: &Self, lb: isize, extent: isize) -> Self {
        let mut inner = (*old.inner).clone();
        inner.name = format!("resized({}, {lb}, {extent})", old.name());
        inner.lb = lb as i64;
        inner.ub = lb as i64 + extent as i64;
        inner.committed = false;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// A copy of this datatype (`MPI_Type_dup`); committed if this one is.
    pub fn dup(&self) -> Self {
        Self {
            inner: Arc::new((*self.inner).clone()),
        }
    }

    /// Makes the datatype usable in communication (`MPI_Type_commit`).
    pub fn commit(&mut self) {
        Arc::make_mut(&mut self.inner).committed = true;
    }

    /// Whether [`Datatype::commit`] was called (predefined types always are).
    pub fn is_committed(&self) -> bool {
        self.inner.committed
    }

    /// A name for messages.
    pub fn name(&self) -> String {
        self.inner.name.clone()
    }

    /// Bytes of data in one element (`MPI_Type_size`).
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// Lower bound (`MPI_Type_get_extent`).
    pub fn lower_bound(&self) -> isize {
        self.inner.lb as isize
    }

    /// Extent: the stride between consecutive elements (`MPI_Type_get_extent`).
    pub fn extent(&self) -> i64 {
        self.inner.ub - self.inner.lb
    }

    /// True lower bound and true extent: the span of the bytes actually holding data
    /// (`MPI_Type_get_true_extent`).
    pub fn true_extent(&self) -> (isize, isize) {
        let lo = self.inner.segs.iter().map(|s| s.disp).min();
        let hi = self.inner.segs.iter().map(Seg::end).max();
        match (lo, hi) {
            (Some(l), Some(h)) => (l as isize, (h - l) as isize),
            _ => (0, 0),
        }
    }

    /// The one primitive every element is made of, if the layout is gap-free from 0 and not
    /// opaque (what predefined reductions need).
    pub(crate) fn homogeneous_primitive(&self) -> Option<Primitive> {
        let first = self.inner.segs.first()?;
        let same = self.inner.segs.iter().all(|s| s.prim == first.prim);
        (!self.inner.opaque && !self.inner.pair && same && self.is_contiguous())
            .then_some(first.prim)
    }

    /// `(value, index)` primitives if this is a [`crate::collective::ValueIndex`] pair.
    pub(crate) fn as_pair(&self) -> Option<(Primitive, Primitive)> {
        match self.inner.segs[..] {
            [a, b]
                if a.disp == 0
                    && a.count == 1
                    && b.count == 1
                    && b.disp == a.prim.size() as i64
                    && self.extent() == (a.prim.size() + b.prim.size()) as i64 =>
            {
                Some((a.prim, b.prim))
            }
            _ => None,
        }
    }

    /// Whether `count` elements occupy exactly `count * size` consecutive bytes from 0.
    pub fn is_contiguous(&self) -> bool {
        let ext = self.extent();
        let mut runs = self.byte_runs();
        let first = runs.next();
        self.inner.lb == 0
            && ext == self.inner.size as i64
            && runs.next().is_none()
            && first.is_none_or(|(d, len)| d == 0 && len == self.inner.size)
    }

    /// The typemap's byte runs in typemap order, touching runs merged.
    fn byte_runs(&self) -> impl Iterator<Item = (i64, usize)> + '_ {
        let mut segs = self.inner.segs.iter().peekable();
        std::iter::from_fn(move || {
            let s = segs.next()?;
            let (d, mut len) = (s.disp, s.bytes());
            while let Some(n) = segs.peek()
                && n.disp == d + len as i64
            {
                len += n.bytes();
                segs.next();
            }
            Some((d, len))
        })
    }

    /// Bytes the packed form of `count` elements takes (`MPI_Pack_size`).
    pub fn pack_size(&self, count: usize) -> usize {
        count * self.size()
    }

    /// Checks that `count` elements with origin at byte 0 of a `len`-byte buffer stay inside
    /// it, and that the type is committed.
    pub(crate) fn check_span(&self, count: usize, len: usize) -> Result<(), Error> {
        if !self.inner.committed {
            return Err(Error::UsageDatatype(format!(
                "{} is not committed",
                self.name()
            )));
        }
        if count == 0 || self.size() == 0 {
            return Ok(());
        }
        let (tlb, text) = self.true_extent();
        let ext = self.extent();
        let last = (count - 1) as i64 * ext;
        let lo = (tlb as i64).min(tlb as i64 + last);
        let hi = (tlb as i64 + text as i64).max(tlb as i64 + text as i64 + last);
        if lo < 0 || hi > len as i64 {
            return Err(Error::UsageDatatype(format!(
                "{count} elements of {} span bytes {lo}..{hi} of a {len}-byte buffer",
                self.name()
            )));
        }
        Ok(())
    }

    /// Packs `count` elements laid out in `buf` (origin at byte 0) into `out` from
    /// `*position`, advancing it (`MPI_Pack`).
    ///
    /// # Errors
    /// [`Error::UsageDatatype`] when the layout leaves `buf` or the type is not committed;
    /// [`Error::UsageTruncated`]-like [`Error::UsageCountMismatch`] when `out` is too small.
    pub fn pack_into(
        &self,
        buf: &[u8],
        count: usize,
        out: &mut [u8],
        position: &mut usize,
    ) -> Result<(), Error> {
        self.check_span(count, buf.len())?;
        let need = self.pack_size(count);
        if position.checked_add(need).is_none_or(|e| e > out.len()) {
            return Err(Error::UsageCountMismatch {
                op: "MPI_Pack",
                detail: format!(
                    "{need} bytes at position {position} of a {}-byte buffer",
                    out.len()
                ),
            });
        }
        if self.is_contiguous() {
            out[*position..*position + need].copy_from_slice(&buf[..need]);
            *position += need;
            return Ok(());
        }
        let ext = self.extent();
        for i in 0..count as i64 {
            for (d, len) in self.byte_runs() {
                let at = (i * ext + d) as usize;
                out[*position..*position + len].copy_from_slice(&buf[at..at + len]);
                *position += len;
            }
        }
        Ok(())
    }

    /// Unpacks `count` elements from `packed` at `*position` into the layout in `buf`,
    /// advancing the position (`MPI_Unpack`).
    ///
    /// # Errors
    /// As [`Datatype::pack_into`].
    pub fn unpack_from(
        &self,
        packed: &[u8],
        position: &mut usize,
        buf: &mut [u8],
        count: usize,
    ) -> Result<(), Error> {
        self.check_span(count, buf.len())?;
        let need = self.pack_size(count);
        if position.checked_add(need).is_none_or(|e| e > packed.len()) {
            return Err(Error::UsageCountMismatch {
                op: "MPI_Unpack",
                detail: format!(
                    "{need} bytes at position {position} of a {}-byte buffer",
                    packed.len()
                ),
            });
        }
        if self.is_contiguous() {
            buf[..need].copy_from_slice(&packed[*position..*position + need]);
            *position += need;
            return Ok(());
        }
        let ext = self.extent();
        for i in 0..count as i64 {
            for (d, len) in self.byte_runs() {
                let at = (i * ext + d) as usize;
                buf[at..at + len].copy_from_slice(&packed[*position..*position + len]);
                *position += len;
            }
        }
        Ok(())
    }

    /// Number of whole elements in `bytes` bytes of packed data, `None` if not whole
    /// (`MPI_Get_count`; `None` is `MPI_UNDEFINED`).
    pub fn count_of(&self, bytes: usize) -> Option<usize> {
        match self.size() {
            0 => Some(0),
            s if bytes.is_multiple_of(s) => Some(bytes / s),
            _ => None,
        }
    }

    /// Number of primitive elements in `bytes` bytes of packed data (`MPI_Get_elements`),
    /// counting the primitives of a trailing partial element; `None` if a primitive is cut.
    pub fn elements_of(&self, bytes: usize) -> Option<usize> {
        let per: usize = self.inner.segs.iter().map(|s| s.count).sum();
        if self.size() == 0 {
            return Some(0);
        }
        let (whole, mut rest) = (bytes / self.size(), bytes % self.size());
        let mut n = whole * per;
        for s in &self.inner.segs {
            if rest == 0 {
                break;
            }
            let k = (rest / s.prim.size()).min(s.count);
            n += k;
            rest -= k * s.prim.size();
            if k < s.count {
                break;
            }
        }
        (rest == 0).then_some(n)
    }
}

/// `count` elements of `datatype` laid out in `buf` (origin at byte 0): a buffer to send
/// (rsmpi's `View`).
#[derive(Debug)]
pub struct View<'a> {
    buf: &'a [u8],
    count: usize,
    datatype: Datatype,
}

impl<'a> View<'a> {
    /// A view of `count` elements of `datatype` in the bytes of `buf`.
    ///
    /// # Errors
    /// [`Error::UsageDatatype`] when the layout leaves `buf` or the type is not committed.
    pub fn with_count_and_datatype<B: Buffer + ?Sized>(
        buf: &'a B,
        count: usize,
        datatype: &Datatype,
    ) -> Result<Self, Error> {
        let buf = buf.as_bytes();
        datatype.check_span(count, buf.len())?;
        Ok(Self {
            buf,
            count,
            datatype: datatype.clone(),
        })
    }
}

/// `count` elements of `datatype` laid out in `buf`: a buffer to receive into (rsmpi's
/// `MutView`).
#[derive(Debug)]
pub struct MutView<'a> {
    buf: &'a mut [u8],
    count: usize,
    datatype: Datatype,
}

impl<'a> MutView<'a> {
    /// A view of `count` elements of `datatype` in the bytes of `buf`.
    ///
    /// # Errors
    /// As [`View::with_count_and_datatype`].
    pub fn with_count_and_datatype<B: BufferMut + ?Sized>(
        buf: &'a mut B,
        count: usize,
        datatype: &Datatype,
    ) -> Result<Self, Error> {
        let buf = buf.as_bytes_mut();
        datatype.check_span(count, buf.len())?;
        Ok(Self {
            buf,
            count,
            datatype: datatype.clone(),
        })
    }
}

impl Buffer for View<'_> {
    fn as_bytes(&self) -> &[u8] {
        self.buf
    }
    fn item_datatype(&self) -> Datatype {
        self.datatype.clone()
    }
    fn packed(&self) -> Cow<'_, [u8]> {
        if self.datatype.is_contiguous() {
            return Cow::Borrowed(&self.buf[..self.datatype.pack_size(self.count)]);
        }
        let mut out = vec![0u8; self.datatype.pack_size(self.count)];
        let mut pos = 0;
        // The span was checked at construction, and out is exactly pack_size long.
        let _ = self
            .datatype
            .pack_into(self.buf, self.count, &mut out, &mut pos);
        Cow::Owned(out)
    }
}

impl BufferMut for MutView<'_> {
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        self.buf
    }
    fn element_size(&self) -> usize {
        1
    }
    fn layout(&self) -> Option<(usize, Datatype)> {
        if self.datatype.is_contiguous() {
            None
        } else {
            Some((self.count, self.datatype.clone()))
        }
    }
    fn packed_capacity(&self) -> usize {
        self.datatype.pack_size(self.count)
    }
}

/// Something that can be sent: a value, a slice, a vector or an array of [`Equivalence`]
/// types.
pub trait Buffer {
    /// The bytes to send (for a [`View`]: the memory the layout lives in).
    fn as_bytes(&self) -> &[u8];

    /// The message: the bytes themselves, or a packed copy of a non-contiguous layout.
    fn packed(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }

    /// The datatype of one element (what reductions are resolved against).
    fn item_datatype(&self) -> Datatype {
        Datatype::opaque(1)
    }
}

/// Something that can be received into.
pub trait BufferMut {
    /// The bytes to receive into.
    fn as_bytes_mut(&mut self) -> &mut [u8];
    /// Size of one element; a received message must be a whole number of them.
    fn element_size(&self) -> usize;

    /// `Some((count, datatype))` when the buffer is a non-contiguous layout that messages
    /// are unpacked into.
    fn layout(&self) -> Option<(usize, Datatype)> {
        None
    }

    /// The largest message this buffer takes.
    fn packed_capacity(&self) -> usize {
        0
    }

    /// The datatype of one element (what reductions are resolved against).
    fn item_datatype(&self) -> Datatype {
        Datatype::opaque(1)
    }
}

pub(crate) fn bytes_of<T: Equivalence>(s: &[T]) -> &[u8] {
    // SAFETY: T is plain old data (Equivalence), so its memory is `size_of_val(s)` initialized
    // bytes; u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), size_of_val(s)) }
}

pub(crate) fn bytes_of_mut<T: Equivalence>(s: &mut [T]) -> &mut [u8] {
    // SAFETY: as in `bytes_of`; every bit pattern is a valid T, so any bytes written through
    // the view leave valid values.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), size_of_val(s)) }
}

impl<T: Equivalence> Buffer for T {
    fn as_bytes(&self) -> &[u8] {
        bytes_of(std::slice::from_ref(self))
    }
    fn item_datatype(&self) -> Datatype {
        T::equivalent_datatype()
    }
}

impl<T: Equivalence> Buffer for [T] {
    fn as_bytes(&self) -> &[u8] {
        bytes_of(self)
    }
    fn item_datatype(&self) -> Datatype {
        T::equivalent_datatype()
    }
}

impl<T: Equivalence> Buffer for Vec<T> {
    fn as_bytes(&self) -> &[u8] {
        bytes_of(self)
    }
    fn item_datatype(&self) -> Datatype {
        T::equivalent_datatype()
    }
}

impl<T: Equivalence> BufferMut for T {
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        bytes_of_mut(std::slice::from_mut(self))
    }
    fn element_size(&self) -> usize {
        size_of::<T>()
    }
    fn item_datatype(&self) -> Datatype {
        T::equivalent_datatype()
    }
}

impl<T: Equivalence> BufferMut for [T] {
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        bytes_of_mut(self)
    }
    fn element_size(&self) -> usize {
        size_of::<T>()
    }
    fn item_datatype(&self) -> Datatype {
        T::equivalent_datatype()
    }
}

impl<T: Equivalence> BufferMut for Vec<T> {
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        bytes_of_mut(self)
    }
    fn element_size(&self) -> usize {
        size_of::<T>()
    }
    fn item_datatype(&self) -> Datatype {
        T::equivalent_datatype()
    }
}

/// Builds a vector of `n` zeroed elements.
pub(crate) fn zeroed_vec<T: Equivalence>(n: usize) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    let bytes = n * size_of::<T>();
    // SAFETY: the allocation holds n elements; zero bytes are a valid T (Equivalence).
    unsafe {
        std::ptr::write_bytes(v.as_mut_ptr().cast::<u8>(), 0, bytes);
        v.set_len(n);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views() {
        let v = vec![1u32, 2];
        assert_eq!(v.as_bytes(), &[1, 0, 0, 0, 2, 0, 0, 0]);
        let mut x = 0u16;
        x.as_bytes_mut().copy_from_slice(&[1, 1]);
        assert_eq!(x, 257);
        assert_eq!(zeroed_vec::<f64>(3), vec![0.0; 3]);
    }
}

#[cfg(test)]
mod layout_tests {
    use proptest::prelude::*;

    use super::*;

    fn f64t() -> Datatype {
        Datatype::primitive(Primitive::F64)
    }

    #[test]
    fn constructors() {
        let v = Datatype::vector(3, 2, 4, &Datatype::primitive(Primitive::I32));
        assert_eq!((v.size(), v.extent(), v.lower_bound()), (24, 40, 0));
        assert!(!v.is_committed() && !v.is_contiguous());
        let c = Datatype::contiguous(4, &f64t());
        assert!(c.is_contiguous() && c.is_committed());
        assert_eq!(c.homogeneous_primitive(), Some(Primitive::F64));
        let h = Datatype::hvector(2, 1, -16, &f64t());
        assert_eq!((h.lower_bound(), h.extent()), (-16, 24));
        let i = Datatype::indexed(&[1, 2], &[3, 0], &f64t()).unwrap();
        assert_eq!((i.size(), i.extent(), i.true_extent()), (24, 32, (0, 32)));
        let ib = Datatype::indexed_block(2, &[0, 5], &Datatype::primitive(Primitive::U8));
        assert_eq!((ib.size(), ib.extent()), (4, 7));
        let s = Datatype::structure(
            &[1, 1],
            &[0, 8],
            &[&Datatype::primitive(Primitive::I32), &f64t()],
        )
        .unwrap();
        assert_eq!((s.size(), s.extent(), s.true_extent()), (12, 16, (0, 16)));
        assert_eq!(s.elements_of(12), Some(2));
        assert_eq!(s.elements_of(4), Some(1));
        assert_eq!(s.elements_of(6), None);
        assert_eq!(s.count_of(24), Some(2));
        assert_eq!(s.count_of(13), None);
        let r = Datatype::resized(&s, -4, 24);
        assert_eq!((r.lower_bound(), r.extent(), r.size()), (-4, 24, 12));
        let d = r.dup();
        assert_eq!(d, r);
        assert!(Datatype::structure(&[1], &[0, 1], &[&f64t()]).is_err());
        assert_eq!(
            <[u16; 3]>::equivalent_datatype().homogeneous_primitive(),
            Some(Primitive::U16)
        );
        assert_eq!(Datatype::opaque(8).homogeneous_primitive(), None);
    }

    #[test]
    fn pack_unpack_vector() {
        let mut t = Datatype::vector(2, 2, 3, &Datatype::primitive(Primitive::U8));
        t.commit();
        let src: Vec<u8> = (0..12).collect();
        let mut out = vec![0u8; t.pack_size(2)];
        let mut pos = 0;
        t.pack_into(&src, 2, &mut out, &mut pos).unwrap();
        // Extent 5: element 0 at 0 (bytes 0,1,3,4), element 1 at 5 (5,6,8,9).
        assert_eq!(out, [0, 1, 3, 4, 5, 6, 8, 9]);
        let mut back = vec![0u8; 12];
        let mut pos = 0;
        t.unpack_from(&out, &mut pos, &mut back, 2).unwrap();
        assert_eq!(back, [0, 1, 0, 3, 4, 5, 6, 0, 8, 9, 0, 0]);
        let mut small = vec![0u8; 3];
        assert!(t.pack_into(&src, 2, &mut small, &mut 0).is_err());
        assert!(t.pack_into(&src[..6], 2, &mut out, &mut 0).is_err());
        let raw = Datatype::vector(2, 2, 3, &Datatype::primitive(Primitive::U8));
        assert!(raw.pack_into(&src, 1, &mut out, &mut 0).is_err());
    }

    /// A random layout: a tree of constructors over primitives.
    fn layout() -> impl Strategy<Value = Datatype> {
        let leaf = prop_oneof![
            Just(Datatype::primitive(Primitive::U8)),
            Just(Datatype::primitive(Primitive::I32)),
            Just(Datatype::primitive(Primitive::F64)),
        ];
        leaf.prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                (1usize..4, inner.clone()).prop_map(|(n, t)| Datatype::contiguous(n, &t)),
                (1usize..4, 1usize..3, 0isize..4, inner.clone())
                    .prop_map(|(c, b, extra, t)| Datatype::vector(c, b, b as isize + extra, &t)),
                (
                    proptest::collection::vec((1usize..3, 0isize..6), 1..4),
                    inner.clone()
                )
                    .prop_map(|(bl, t)| {
                        // Non-overlapping, increasing displacements.
                        let mut d = 0isize;
                        let (lens, displs): (Vec<usize>, Vec<isize>) = bl
                            .into_iter()
                            .map(|(l, gap)| {
                                let here = d + gap;
                                d = here + l as isize;
                                (l, here)
                            })
                            .unzip();
                        Datatype::indexed(&lens, &displs, &t).unwrap()
                    }),
                (inner, 0isize..16).prop_map(|(t, pad)| Datatype::resized(
                    &t,
                    0,
                    t.extent() as isize + pad
                )),
            ]
        })
    }

    proptest! {
        #[test]
        fn pack_unpack_round_trip(t in layout(), count in 0usize..4, seed in any::<u64>()) {
            let mut t = t;
            t.commit();
            let (tlb, text) = t.true_extent();
            prop_assume!(tlb >= 0);
            let span = if count == 0 { 0 } else { (count as i64 - 1) * t.extent() + (tlb + text) as i64 };
            let len = span.max(0) as usize;
            let src: Vec<u8> = (0..len).map(|i| (i as u64).wrapping_mul(seed | 1).wrapping_shr(7) as u8).collect();
            let mut packed = vec![0u8; t.pack_size(count)];
            let mut pos = 0;
            t.pack_into(&src, count, &mut packed, &mut pos).unwrap();
            prop_assert_eq!(pos, t.pack_size(count));
            let mut back = vec![0u8; len];
            let mut pos = 0;
            t.unpack_from(&packed, &mut pos, &mut back, count).unwrap();
            // Packing what was unpacked gives the same bytes; bytes outside the typemap stay 0.
            let mut again = vec![0u8; packed.len()];
            t.pack_into(&back, count, &mut again, &mut 0).unwrap();
            prop_assert_eq!(&again, &packed);
            let data: usize = back.iter().zip(&src).filter(|(b, s)| b == s && **s != 0).count();
            prop_assert!(data <= t.pack_size(count));
            prop_assert_eq!(t.count_of(packed.len()), Some(if t.size() == 0 { 0 } else { count }));
        }
    }
}
