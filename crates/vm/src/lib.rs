//! The VM driver: runs each sprite as a QEMU `microvm`, builds the guest
//! kernel/initramfs bundle and the standard images.
