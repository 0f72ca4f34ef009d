#![no_main]
corral_fuzz::target!(cri::hostile::config_cri, 64 << 20);
