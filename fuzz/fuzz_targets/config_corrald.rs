#![no_main]
corral_fuzz::target!(supervisor::hostile::config_corrald, 64 << 20);
