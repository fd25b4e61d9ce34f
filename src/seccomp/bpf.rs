//! A tiny classic-BPF assembler: the handful of instructions a seccomp filter needs, forward
//! labels, and a check that every jump fits its field.
//!
//! An instruction is the kernel's `struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }`,
//! carried as one `u64` (`code | jt << 16 | jf << 24 | k << 32`) so a compiled program is
//! plain data.

use super::SeccompError;

// linux/bpf_common.h
const BPF_LD: u16 = 0x00;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_ALU: u16 = 0x04;
const BPF_AND: u16 = 0x50;
const BPF_JMP: u16 = 0x05;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_JGT: u16 = 0x20;
const BPF_JGE: u16 = 0x30;
const BPF_RET: u16 = 0x06;
const BPF_K: u16 = 0x00;

/// A conditional jump's test of the accumulator against a constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Test {
    Eq,
    Gt,
    Ge,
}

/// Where a jump goes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Target {
    /// The next instruction.
    Next,
    Label(Label),
}

/// A forward jump target, bound once with [`Asm::bind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Label(usize);

#[derive(Debug, Clone, Copy)]
enum Ins {
    /// `A = *(u32 *)(seccomp_data + offset)`.
    Load(u32),
    /// `A &= k`.
    And(u32),
    /// Return `k` (a `SECCOMP_RET_*` value).
    Ret(u32),
    /// Always jump.
    Ja(Label),
    /// `if A <test> k goto jt else goto jf`.
    Jump {
        test: Test,
        k: u32,
        jt: Target,
        jf: Target,
    },
}

/// An instruction list with labels.
#[derive(Default)]
pub(super) struct Asm {
    ins: Vec<Ins>,
    /// Position each label was bound to.
    labels: Vec<Option<usize>>,
}

impl Asm {
    pub(super) fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Make `label` point at the next instruction emitted.
    pub(super) fn bind(&mut self, label: Label) {
        self.labels[label.0] = Some(self.ins.len());
    }

    pub(super) fn load(&mut self, offset: u32) {
        self.ins.push(Ins::Load(offset));
    }

    pub(super) fn and(&mut self, k: u32) {
        self.ins.push(Ins::And(k));
    }

    pub(super) fn ret(&mut self, k: u32) {
        self.ins.push(Ins::Ret(k));
    }

    pub(super) fn ja(&mut self, to: Label) {
        self.ins.push(Ins::Ja(to));
    }

    pub(super) fn jump(&mut self, test: Test, k: u32, jt: Target, jf: Target) {
        self.ins.push(Ins::Jump { test, k, jt, jf });
    }

    pub(super) fn len(&self) -> usize {
        self.ins.len()
    }

    /// Resolve labels into offsets. Classic BPF only jumps forward, conditional jumps by at
    /// most 255 instructions; a jump that breaks either rule is a compiler bug, reported as
    /// [`SeccompError::Internal`] rather than emitted wrong.
    pub(super) fn finish(self) -> Result<Vec<u64>, SeccompError> {
        let offset = |pc: usize, target: Target| -> Result<u32, SeccompError> {
            let to = match target {
                Target::Next => return Ok(0),
                Target::Label(l) => self.labels[l.0].ok_or(SeccompError::Internal(
                    "jump to a label that was never bound",
                ))?,
            };
            to.checked_sub(pc + 1)
                .map(|d| d as u32)
                .ok_or(SeccompError::Internal("backward jump"))
        };
        let short = |d: u32| -> Result<u8, SeccompError> {
            u8::try_from(d).map_err(|_| SeccompError::Internal("conditional jump beyond 255"))
        };
        let mut out = Vec::with_capacity(self.ins.len());
        for (pc, ins) in self.ins.iter().enumerate() {
            let (code, jt, jf, k) = match *ins {
                Ins::Load(off) => (BPF_LD | BPF_W | BPF_ABS, 0, 0, off),
                Ins::And(k) => (BPF_ALU | BPF_AND | BPF_K, 0, 0, k),
                Ins::Ret(k) => (BPF_RET | BPF_K, 0, 0, k),
                Ins::Ja(l) => (BPF_JMP | BPF_JA, 0, 0, offset(pc, Target::Label(l))?),
                Ins::Jump { test, k, jt, jf } => {
                    let op = match test {
                        Test::Eq => BPF_JEQ,
                        Test::Gt => BPF_JGT,
                        Test::Ge => BPF_JGE,
                    };
                    (
                        BPF_JMP | op | BPF_K,
                        short(offset(pc, jt)?)?,
                        short(offset(pc, jf)?)?,
                        k,
                    )
                }
            };
            out.push(pack(code, jt, jf, k));
        }
        Ok(out)
    }
}

/// One `sock_filter` as a `u64`.
pub(super) fn pack(code: u16, jt: u8, jf: u8, k: u32) -> u64 {
    u64::from(code) | u64::from(jt) << 16 | u64::from(jf) << 24 | u64::from(k) << 32
}

/// The fields of a packed instruction.
pub(super) fn unpack(insn: u64) -> (u16, u8, u8, u32) {
    (
        insn as u16,
        (insn >> 16) as u8,
        (insn >> 24) as u8,
        (insn >> 32) as u32,
    )
}

/// An interpreter for the instructions [`Asm`] emits, run against a `seccomp_data`
/// (nr, arch, instruction pointer, args), so tests can ask the compiled program about every
/// call without a kernel. Returns the `SECCOMP_RET_*` value and the instructions executed.
#[cfg(test)]
pub(super) fn run(prog: &[u64], nr: u32, arch: u32, args: [u64; 6]) -> (u32, usize) {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_ne_bytes());
    data[4..8].copy_from_slice(&arch.to_ne_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
    }
    let mut acc: u32 = 0;
    let mut pc = 0usize;
    let mut steps = 0usize;
    loop {
        steps += 1;
        let (code, jt, jf, k) = unpack(prog[pc]);
        pc += 1;
        match code {
            c if c == BPF_LD | BPF_W | BPF_ABS => {
                let o = k as usize;
                assert!(o.is_multiple_of(4) && o + 4 <= 64, "bad load offset {o}");
                acc = u32::from_ne_bytes(data[o..o + 4].try_into().unwrap());
            }
            c if c == BPF_ALU | BPF_AND | BPF_K => acc &= k,
            c if c == BPF_RET | BPF_K => return (k, steps),
            c if c == BPF_JMP | BPF_JA => pc += k as usize,
            c => {
                let hit = match c & 0xf0 {
                    BPF_JEQ => acc == k,
                    BPF_JGT => acc > k,
                    BPF_JGE => acc >= k,
                    _ => panic!("opcode {c:#x} not emitted by Asm"),
                };
                pc += usize::from(if hit { jt } else { jf });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_resolve_to_forward_offsets() {
        let mut a = Asm::default();
        let l = a.label();
        a.load(0);
        a.jump(Test::Eq, 7, Target::Next, Target::Label(l));
        a.ret(1);
        a.bind(l);
        a.ret(2);
        let p = a.finish().unwrap();
        assert_eq!(unpack(p[1]), (BPF_JMP | BPF_JEQ, 0, 1, 7));
        assert_eq!(run(&p, 7, 0, [0; 6]).0, 1);
        assert_eq!(run(&p, 8, 0, [0; 6]).0, 2);
    }

    #[test]
    fn a_conditional_jump_too_far_is_an_error_not_a_wrong_program() {
        let mut a = Asm::default();
        let l = a.label();
        a.jump(Test::Eq, 0, Target::Label(l), Target::Next);
        for _ in 0..300 {
            a.ret(0);
        }
        a.bind(l);
        a.ret(1);
        assert!(matches!(a.finish(), Err(SeccompError::Internal(_))));
    }

    #[test]
    fn pack_matches_sock_filter_layout() {
        let insn = pack(0x15, 1, 2, 0xdead_beef);
        let f = libc::sock_filter {
            code: insn as u16,
            jt: (insn >> 16) as u8,
            jf: (insn >> 24) as u8,
            k: (insn >> 32) as u32,
        };
        assert_eq!((f.code, f.jt, f.jf, f.k), (0x15, 1, 2, 0xdead_beef));
    }
}
