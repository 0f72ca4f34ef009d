#![no_main]
corral_fuzz::target!(supervisor::hostile::events_ttrpc, 64 << 20);
