//! The VM driver: runs each sprite as a QEMU `microvm`, builds the guest
//! kernel/initramfs bundle and the standard images.

pub mod accel;
pub mod agent;
pub mod archive;
pub mod boot_watch;
pub mod checkpoint_disk;
pub mod clock;
pub mod fsdiff;
pub mod image;
pub mod import;
pub mod initramfs;
pub mod kernel;
pub mod layer;
pub mod machine;
pub mod qemu;
pub mod rootfs;
pub mod run_dir;
pub mod runtime;
pub mod terminal;

pub use image::{ImageError, ImageInfo, ImageKind};
pub use kernel::{Kernel, KernelError};
pub use machine::{Machine, MachineConfig, MachineError};
pub use qemu::Accel;
pub use runtime::{Runtime, RuntimeError};
pub use wisp_nbd::BlockDevice;
