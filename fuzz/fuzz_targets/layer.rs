#![no_main]
corral_fuzz::target!(snapshotter::hostile::layer, 64 << 20);
