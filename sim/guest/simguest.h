/*
 * simguest: a simulated Xen guest whose blkfront is written from the
 * protocol spec (xen/io/blkif.h, the FRONT_RING macros of xen/io/ring.h).
 * It creates a domain on the simulated hypervisor, does the xenbus
 * handshake, runs a verified workload or a hostile case and disconnects.
 *
 * `vdisk sim guest [options]` calls vd_simguest_main(); `--help` lists the
 * options. Exit status: 0 when there were no verification or I/O errors
 * (and the hostile case behaved as expected), 1 otherwise, 2 on a usage
 * error, 77 when a hostile case cannot run in this setup (skip).
 */
#ifndef VD_SIM_GUEST_SIMGUEST_H
#define VD_SIM_GUEST_SIMGUEST_H

int vd_simguest_main(int argc, char **argv);

#endif
