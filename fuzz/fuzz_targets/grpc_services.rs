#![no_main]
corral_fuzz::target!(supervisor::hostile::grpc_services, 64 << 20);
