#![no_main]
corral_fuzz::target!(protocol::hostile::grpc_front, 16 << 20);
