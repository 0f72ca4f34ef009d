#![no_main]
corral_fuzz::target!(shim::hostile::shim_ttrpc, 64 << 20);
