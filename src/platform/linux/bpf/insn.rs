//! A small typed encoder for eBPF instructions (`struct bpf_insn`, linux/bpf.h) and an
//! assembler with forward labels.
//!
//! Only what our programs use: 64-bit ALU with immediates and registers, 32-bit moves,
//! conditional and unconditional jumps, loads and stores of 1/2/4/8 bytes, `ld_imm64` with an
//! immediate or a map-fd pseudo source, helper calls and `exit`. Every instruction is eight
//! bytes: `code`, `dst:4 | src:4` (little-endian bit fields: `dst` in the low nibble),
//! `off: i16`, `imm: i32`. Jumps go to [`Label`]s resolved by [`Asm::finish`], so a program
//! reads as straight-line assembly and offsets are never counted by hand.

/// A register, `r0` ..= `r10` (`r10` is the read-only frame pointer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reg(u8);

pub const R0: Reg = Reg(0);
pub const R1: Reg = Reg(1);
pub const R2: Reg = Reg(2);
pub const R3: Reg = Reg(3);
pub const R4: Reg = Reg(4);
pub const R5: Reg = Reg(5);
pub const R6: Reg = Reg(6);
pub const R7: Reg = Reg(7);
pub const R8: Reg = Reg(8);
pub const R9: Reg = Reg(9);
pub const R10: Reg = Reg(10);

/// Access sizes of loads and stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    B = 0x10,
    H = 0x08,
    W = 0x00,
    DW = 0x18,
}

/// ALU operations (`BPF_ALU64` class).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alu {
    Add = 0x00,
    Sub = 0x10,
    Mul = 0x20,
    Div = 0x30,
    Or = 0x40,
    And = 0x50,
    Lsh = 0x60,
    Rsh = 0x70,
    Mod = 0x90,
    Xor = 0xa0,
    Mov = 0xb0,
}

/// Jump conditions (`BPF_JMP` class, 64-bit compares, unsigned unless named signed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    Eq = 0x10,
    Gt = 0x20,
    Ge = 0x30,
    Set = 0x40,
    Ne = 0x50,
    Lt = 0xa0,
    Le = 0xb0,
}

const CLASS_LD: u8 = 0x00;
const CLASS_LDX: u8 = 0x01;
const CLASS_ST: u8 = 0x02;
const CLASS_STX: u8 = 0x03;
const CLASS_ALU: u8 = 0x04;
const CLASS_JMP: u8 = 0x05;
const CLASS_ALU64: u8 = 0x07;
const MODE_IMM: u8 = 0x00;
const MODE_ABS: u8 = 0x20;
const MODE_MEM: u8 = 0x60;
const SRC_K: u8 = 0x00;
const SRC_X: u8 = 0x08;
const OP_CALL: u8 = 0x80;
const OP_EXIT: u8 = 0x90;
/// `BPF_PSEUDO_MAP_FD`: the `imm` of an `ld_imm64` is a map descriptor.
pub const PSEUDO_MAP_FD: u8 = 1;

/// One encoded instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    const fn new(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
        Insn { code, dst: dst.0, src: src.0, off, imm }
    }

    /// The eight bytes the kernel reads.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.src << 4) | (self.dst & 0x0f);
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }

    /// `dst op= imm` (64-bit).
    pub const fn alu_imm(op: Alu, dst: Reg, imm: i32) -> Insn {
        Insn::new(CLASS_ALU64 | op as u8 | SRC_K, dst, R0, 0, imm)
    }

    /// `dst op= src` (64-bit).
    pub const fn alu_reg(op: Alu, dst: Reg, src: Reg) -> Insn {
        Insn::new(CLASS_ALU64 | op as u8 | SRC_X, dst, src, 0, 0)
    }

    /// `dst = imm` (64-bit, sign-extended).
    pub const fn mov_imm(dst: Reg, imm: i32) -> Insn {
        Insn::alu_imm(Alu::Mov, dst, imm)
    }

    /// `dst = src` (64-bit).
    pub const fn mov_reg(dst: Reg, src: Reg) -> Insn {
        Insn::alu_reg(Alu::Mov, dst, src)
    }

    /// `dst = (u32)(dst op imm)` (32-bit ALU, upper half zeroed).
    pub const fn alu32_imm(op: Alu, dst: Reg, imm: i32) -> Insn {
        Insn::new(CLASS_ALU | op as u8 | SRC_K, dst, R0, 0, imm)
    }

    /// `dst = (u32)(dst op src)` (32-bit ALU, upper half zeroed).
    pub const fn alu32_reg(op: Alu, dst: Reg, src: Reg) -> Insn {
        Insn::new(CLASS_ALU | op as u8 | SRC_X, dst, src, 0, 0)
    }

    /// Legacy packet load for socket filters: `r0 = ntoh(*(size *)(skb->data + off))`
    /// (`BPF_LD | BPF_ABS`; r6 must hold the skb context; an out-of-bounds load ends the
    /// program with 0).
    pub const fn ld_abs(size: Size, off: i32) -> Insn {
        Insn::new(CLASS_LD | MODE_ABS | size as u8, R0, R0, 0, off)
    }

    /// `dst = (u32) src` (32-bit move, upper half zeroed).
    pub const fn mov32_reg(dst: Reg, src: Reg) -> Insn {
        Insn::new(CLASS_ALU | Alu::Mov as u8 | SRC_X, dst, src, 0, 0)
    }

    /// `dst = *(size *)(src + off)`.
    pub const fn ldx(size: Size, dst: Reg, src: Reg, off: i16) -> Insn {
        Insn::new(CLASS_LDX | MODE_MEM | size as u8, dst, src, off, 0)
    }

    /// `*(size *)(dst + off) = src`.
    pub const fn stx(size: Size, dst: Reg, off: i16, src: Reg) -> Insn {
        Insn::new(CLASS_STX | MODE_MEM | size as u8, dst, src, off, 0)
    }

    /// `*(size *)(dst + off) = imm`.
    pub const fn st(size: Size, dst: Reg, off: i16, imm: i32) -> Insn {
        Insn::new(CLASS_ST | MODE_MEM | size as u8, dst, R0, off, imm)
    }

    /// `if dst cond imm goto +off`.
    pub const fn jmp_imm(cond: Cond, dst: Reg, imm: i32, off: i16) -> Insn {
        Insn::new(CLASS_JMP | cond as u8 | SRC_K, dst, R0, off, imm)
    }

    /// `if dst cond src goto +off`.
    pub const fn jmp_reg(cond: Cond, dst: Reg, src: Reg, off: i16) -> Insn {
        Insn::new(CLASS_JMP | cond as u8 | SRC_X, dst, src, off, 0)
    }

    /// `goto +off`.
    pub const fn ja(off: i16) -> Insn {
        Insn::new(CLASS_JMP, R0, R0, off, 0)
    }

    /// Calls helper number `id` (arguments in r1-r5, result in r0; r1-r5 are clobbered).
    pub const fn call(id: i32) -> Insn {
        Insn::new(CLASS_JMP | OP_CALL, R0, R0, 0, id)
    }

    /// Returns r0.
    pub const fn exit() -> Insn {
        Insn::new(CLASS_JMP | OP_EXIT, R0, R0, 0, 0)
    }

    /// `dst = imm64`: two instruction slots; `src` is 0 or [`PSEUDO_MAP_FD`].
    pub const fn ld_imm64(dst: Reg, src: u8, imm: u64) -> [Insn; 2] {
        [
            Insn {
                code: CLASS_LD | MODE_IMM | Size::DW as u8,
                dst: dst.0,
                src,
                off: 0,
                imm: imm as u32 as i32,
            },
            Insn { code: 0, dst: 0, src: 0, off: 0, imm: (imm >> 32) as u32 as i32 },
        ]
    }
}

/// Helper function ids (linux/bpf.h `__BPF_FUNC_MAPPER`).
pub mod helper {
    pub const MAP_LOOKUP_ELEM: i32 = 1;
    /// `bpf_get_hash_recalc(skb)` (socket filters, tc).
    pub const GET_HASH_RECALC: i32 = 34;
    pub const REDIRECT_MAP: i32 = 51;
}

/// A jump target, placed once with [`Asm::label`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label(usize);

/// An assembler error (a programming error in a generator, reported rather than panicking).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AsmError {
    #[error("label {0} used but never placed")]
    Unplaced(usize),
    #[error("label {0} placed twice")]
    PlacedTwice(usize),
    #[error("jump offset out of range")]
    OutOfRange,
}

/// Builds an instruction sequence with forward and backward labels.
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    /// (instruction index, label) of every jump to patch.
    fixups: Vec<(usize, Label)>,
    twice: Option<usize>,
}

impl Asm {
    pub fn new() -> Asm {
        Asm::default()
    }

    /// A new, unplaced label.
    pub fn new_label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Places `l` at the next instruction.
    pub fn label(&mut self, l: Label) {
        if self.labels[l.0].is_some() {
            self.twice.get_or_insert(l.0);
        }
        self.labels[l.0] = Some(self.insns.len());
    }

    pub fn push(&mut self, i: Insn) -> &mut Asm {
        self.insns.push(i);
        self
    }

    pub fn push_all(&mut self, is: &[Insn]) -> &mut Asm {
        self.insns.extend_from_slice(is);
        self
    }

    /// `if dst cond imm goto l`.
    pub fn jmp_imm(&mut self, cond: Cond, dst: Reg, imm: i32, l: Label) -> &mut Asm {
        self.fixups.push((self.insns.len(), l));
        self.push(Insn::jmp_imm(cond, dst, imm, 0))
    }

    /// `if dst cond src goto l`.
    pub fn jmp_reg(&mut self, cond: Cond, dst: Reg, src: Reg, l: Label) -> &mut Asm {
        self.fixups.push((self.insns.len(), l));
        self.push(Insn::jmp_reg(cond, dst, src, 0))
    }

    /// `goto l`.
    pub fn ja(&mut self, l: Label) -> &mut Asm {
        self.fixups.push((self.insns.len(), l));
        self.push(Insn::ja(0))
    }

    /// Instructions so far.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// Resolves every jump and returns the program.
    pub fn finish(mut self) -> Result<Vec<Insn>, AsmError> {
        if let Some(l) = self.twice {
            return Err(AsmError::PlacedTwice(l));
        }
        for &(at, l) in &self.fixups {
            let target = self.labels[l.0].ok_or(AsmError::Unplaced(l.0))?;
            let off = i64::try_from(target).map_err(|_| AsmError::OutOfRange)?
                - i64::try_from(at).map_err(|_| AsmError::OutOfRange)?
                - 1;
            self.insns[at].off = i16::try_from(off).map_err(|_| AsmError::OutOfRange)?;
        }
        Ok(self.insns)
    }
}

/// The program as the bytes `BPF_PROG_LOAD` reads.
pub fn to_bytes(insns: &[Insn]) -> Vec<u8> {
    insns.iter().flat_map(|i| i.to_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected bytes are those clang/llvm-objdump print for the same instructions.
    #[test]
    fn alu_and_mov() {
        assert_eq!(Insn::mov_imm(R0, 2).to_bytes(), [0xb7, 0x00, 0, 0, 2, 0, 0, 0]);
        assert_eq!(Insn::mov_reg(R6, R1).to_bytes(), [0xbf, 0x16, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Insn::mov32_reg(R2, R3).to_bytes(), [0xbc, 0x32, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Insn::alu_imm(Alu::Add, R2, 14).to_bytes(), [0x07, 0x02, 0, 0, 14, 0, 0, 0]);
        assert_eq!(Insn::alu_imm(Alu::And, R4, 0x0f).to_bytes(), [0x57, 0x04, 0, 0, 0x0f, 0, 0, 0]);
        assert_eq!(Insn::alu_imm(Alu::Lsh, R4, 2).to_bytes(), [0x67, 0x04, 0, 0, 2, 0, 0, 0]);
        assert_eq!(Insn::alu_reg(Alu::Add, R5, R4).to_bytes(), [0x0f, 0x45, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Insn::alu_imm(Alu::Add, R2, -24).to_bytes(), [0x07, 0x02, 0, 0, 0xe8, 0xff, 0xff, 0xff]);
        // w0 %= 4; w0 = w0 / w1; r0 = ntohs(*(u16 *)(skb->data + 12))
        assert_eq!(Insn::alu32_imm(Alu::Mod, R0, 4).to_bytes(), [0x94, 0x00, 0, 0, 4, 0, 0, 0]);
        assert_eq!(Insn::alu32_reg(Alu::Div, R0, R1).to_bytes(), [0x3c, 0x10, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Insn::ld_abs(Size::H, 12).to_bytes(), [0x28, 0x00, 0, 0, 12, 0, 0, 0]);
    }

    #[test]
    fn loads_and_stores() {
        // r2 = *(u32 *)(r1 + 0); r3 = *(u32 *)(r1 + 4)
        assert_eq!(Insn::ldx(Size::W, R2, R1, 0).to_bytes(), [0x61, 0x12, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Insn::ldx(Size::W, R3, R1, 4).to_bytes(), [0x61, 0x13, 4, 0, 0, 0, 0, 0]);
        assert_eq!(Insn::ldx(Size::H, R5, R2, 12).to_bytes(), [0x69, 0x25, 12, 0, 0, 0, 0, 0]);
        assert_eq!(Insn::ldx(Size::B, R4, R9, 0).to_bytes(), [0x71, 0x94, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Insn::ldx(Size::DW, R1, R2, 8).to_bytes(), [0x79, 0x21, 8, 0, 0, 0, 0, 0]);
        // *(u32 *)(r10 - 8) = r4
        assert_eq!(Insn::stx(Size::W, R10, -8, R4).to_bytes(), [0x63, 0x4a, 0xf8, 0xff, 0, 0, 0, 0]);
        assert_eq!(Insn::stx(Size::H, R10, -6, R4).to_bytes(), [0x6b, 0x4a, 0xfa, 0xff, 0, 0, 0, 0]);
        assert_eq!(Insn::stx(Size::B, R10, -1, R4).to_bytes(), [0x73, 0x4a, 0xff, 0xff, 0, 0, 0, 0]);
        // *(u64 *)(r10 - 16) = 0
        assert_eq!(Insn::st(Size::DW, R10, -16, 0).to_bytes(), [0x7a, 0x0a, 0xf0, 0xff, 0, 0, 0, 0]);
        assert_eq!(Insn::st(Size::B, R10, -2, 7).to_bytes(), [0x72, 0x0a, 0xfe, 0xff, 7, 0, 0, 0]);
    }

    #[test]
    fn jumps_calls_exit() {
        assert_eq!(Insn::jmp_reg(Cond::Gt, R4, R3, 5).to_bytes(), [0x2d, 0x34, 5, 0, 0, 0, 0, 0]);
        assert_eq!(Insn::jmp_imm(Cond::Eq, R5, 8, -3).to_bytes(), [0x15, 0x05, 0xfd, 0xff, 8, 0, 0, 0]);
        assert_eq!(Insn::jmp_imm(Cond::Ne, R0, 0, 1).to_bytes(), [0x55, 0x00, 1, 0, 0, 0, 0, 0]);
        assert_eq!(Insn::jmp_imm(Cond::Lt, R4, 20, 1).to_bytes(), [0xa5, 0x04, 1, 0, 20, 0, 0, 0]);
        assert_eq!(Insn::jmp_imm(Cond::Set, R4, 0x3fff, 1).to_bytes()[0], 0x45);
        assert_eq!(Insn::ja(2).to_bytes(), [0x05, 0, 2, 0, 0, 0, 0, 0]);
        assert_eq!(Insn::call(helper::REDIRECT_MAP).to_bytes(), [0x85, 0, 0, 0, 51, 0, 0, 0]);
        assert_eq!(Insn::exit().to_bytes(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn ld_imm64_and_map_fd() {
        let [a, b] = Insn::ld_imm64(R1, PSEUDO_MAP_FD, 7);
        assert_eq!(a.to_bytes(), [0x18, 0x11, 0, 0, 7, 0, 0, 0]);
        assert_eq!(b.to_bytes(), [0; 8]);
        let [a, b] = Insn::ld_imm64(R2, 0, 0x1122_3344_5566_7788);
        assert_eq!(a.to_bytes(), [0x18, 0x02, 0, 0, 0x88, 0x77, 0x66, 0x55]);
        assert_eq!(b.to_bytes(), [0, 0, 0, 0, 0x44, 0x33, 0x22, 0x11]);
    }

    #[test]
    fn labels_resolve_forward_and_backward() {
        let mut a = Asm::new();
        let (top, out) = (a.new_label(), a.new_label());
        a.label(top);
        a.push(Insn::mov_imm(R0, 0));
        a.jmp_imm(Cond::Eq, R0, 0, out); // 1 -> 3: off 1
        a.ja(top); // 2 -> 0: off -3
        a.label(out);
        a.push(Insn::exit());
        let p = a.finish().unwrap();
        assert_eq!(p[1].off, 1);
        assert_eq!(p[2].off, -3);
        assert_eq!(to_bytes(&p).len(), 32);
    }

    #[test]
    fn unplaced_or_twice_placed_labels_are_errors() {
        let mut a = Asm::new();
        let l = a.new_label();
        a.ja(l);
        assert_eq!(a.finish(), Err(AsmError::Unplaced(0)));
        let mut a = Asm::new();
        let l = a.new_label();
        a.label(l);
        a.label(l);
        assert_eq!(a.finish(), Err(AsmError::PlacedTwice(0)));
    }
}
