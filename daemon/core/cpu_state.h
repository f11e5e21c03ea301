// X86CpuState: one x86_64 vCPU's registers as QEMU keeps them (its
// CPUX86State, migrated as the "cpu" device). Plain data, here so that
// local/ (which reads it from migration streams) and forensics/ (which
// writes it into views/vmcore.elf's CPU notes) share it without depending
// on each other.
#ifndef LAZYRAM_DAEMON_CORE_CPU_STATE_H_
#define LAZYRAM_DAEMON_CORE_CPU_STATE_H_

#include <cstdint>

namespace lazyram {

struct X86Segment {
  uint32_t selector = 0;
  uint64_t base = 0;
  uint32_t limit = 0;
  uint32_t flags = 0;  // QEMU's: the descriptor's high word bits (DESC_*)
};

struct X86CpuState {
  uint32_t index = 0;  // the "cpu" section's instance id
  // QEMU's order: rax rcx rdx rbx rsp rbp rsi rdi r8..r15.
  uint64_t regs[16] = {};
  uint64_t rip = 0;
  uint64_t rflags = 0;
  // QEMU's order: es cs ss ds fs gs.
  X86Segment segs[6];
  X86Segment ldt, tr, gdt, idt;
  uint64_t cr[5] = {};  // cr1 is always 0
  uint64_t kernel_gs_base = 0;
};

}  // namespace lazyram

#endif  // LAZYRAM_DAEMON_CORE_CPU_STATE_H_
