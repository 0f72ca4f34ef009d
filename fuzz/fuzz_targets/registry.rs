#![no_main]
corral_fuzz::target!(supervisor::hostile::registry, 64 << 20);
