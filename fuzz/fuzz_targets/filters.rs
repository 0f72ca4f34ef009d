#![no_main]
corral_fuzz::target!(protocol::hostile::filters, 16 << 20);
