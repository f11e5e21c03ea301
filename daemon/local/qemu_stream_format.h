// The parts of QEMU 7.2's migration stream format that lazyram reads
// (migration/savevm.c, migration/ram.c; prose in docs/forensics.md). Every
// integer is big-endian.
//
//   stream   := [libvirt-header] be32 kFileMagic  be32 kFileVersion  section*
//   section  := kConfiguration be32 len  name[len]  subsection*
//             | (kSectionStart | kSectionFull) be32 id  u8 len  idstr[len]
//                   be32 instance  be32 version  data  [footer]
//             | (kSectionPart | kSectionEnd) be32 id  data  [footer]
//             | kCommand be16 cmd  be16 len  bytes[len]
//             | kEof
//             | kVmDescription be32 len  json[len]        (after kEof)
//   footer   := kFooter be32 id
//   subsection := kSubsection u8 len  name[len]  be32 version  fields
//
// The data of the "ram" section (START, PART*, END) is a list of records
// ending with kEos:
//   record   := be64 (offset_in_block | flags)  [u8 len idstr[len]]  body
// where idstr is present unless flags has kContinue (same block as the
// previous record), and body depends on flags & ~kContinue:
//   kMemSize  the offset is the total RAM size; then, until the sizes add up
//             to it, u8 len  idstr[len]  be64 used_length   (one per RAMBlock)
//   kZero     u8 fill (every byte of the page; 0 in practice)
//   kPage     4096 bytes
//   kEos      nothing: the end of this section's RAM data
// Other device sections carry no length: they cannot be skipped, but they
// all come after the RAM section's END.
#ifndef LAZYRAM_DAEMON_LOCAL_QEMU_STREAM_FORMAT_H_
#define LAZYRAM_DAEMON_LOCAL_QEMU_STREAM_FORMAT_H_

#include <cstdint>

namespace lazyram::qemu_stream {

inline constexpr uint32_t kFileMagic = 0x5145564d;  // "QEVM"
inline constexpr uint32_t kFileVersion = 3;
inline constexpr uint32_t kPageSize = 4096;  // TARGET_PAGE_SIZE on x86

// Section types (QEMU_VM_*).
inline constexpr uint8_t kEof = 0x00;
inline constexpr uint8_t kSectionStart = 0x01;
inline constexpr uint8_t kSectionPart = 0x02;
inline constexpr uint8_t kSectionEnd = 0x03;
inline constexpr uint8_t kSectionFull = 0x04;
inline constexpr uint8_t kSubsection = 0x05;
inline constexpr uint8_t kVmDescription = 0x06;
inline constexpr uint8_t kConfiguration = 0x07;
inline constexpr uint8_t kCommand = 0x08;
inline constexpr uint8_t kFooter = 0x7e;

// RAM record flags (RAM_SAVE_FLAG_*), in the low bits of the offset.
inline constexpr uint64_t kFull = 0x01;  // obsolete, never sent since 2012
inline constexpr uint64_t kZero = 0x02;
inline constexpr uint64_t kMemSize = 0x04;
inline constexpr uint64_t kPage = 0x08;
inline constexpr uint64_t kEos = 0x10;
inline constexpr uint64_t kContinue = 0x20;
inline constexpr uint64_t kXbzrle = 0x40;
inline constexpr uint64_t kHook = 0x80;  // RDMA
inline constexpr uint64_t kCompressPage = 0x100;
inline constexpr uint64_t kFlagMask = kPageSize - 1;

inline constexpr uint32_t kRamSectionVersion = 4;

// `virsh save` puts libvirt's header (native-endian u32s) and the domain
// XML in front of the stream; the stream starts kLibvirtHeaderSize +
// data_len bytes in. A "Part" magic marks an image still being written.
inline constexpr char kLibvirtMagic[] = "LibvirtQemudSave";
inline constexpr char kLibvirtPartialMagic[] = "LibvirtQemudPart";
inline constexpr uint64_t kLibvirtMagicSize = 16;
inline constexpr uint64_t kLibvirtHeaderSize = 16 + 19 * 4;

}  // namespace lazyram::qemu_stream

#endif  // LAZYRAM_DAEMON_LOCAL_QEMU_STREAM_FORMAT_H_
