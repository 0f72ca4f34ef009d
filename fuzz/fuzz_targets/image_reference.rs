#![no_main]
corral_fuzz::target!(supervisor::hostile::image_reference, 64 << 20);
