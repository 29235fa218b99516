/*
 * The simulated hypervisor (`vdisk sim hv`): one single-threaded process
 * that plays Xen for the backend and for simulated guests. It serves
 *   DIR/hv.sock          the hypervisor protocol (domains, memory, grant
 *                        tables, event channels), spoken by the hvc client
 *                        (src/transport/sim/hvc.h, protocol in hvc-proto.h);
 *   DIR/xenstored        xenstore for dom0 (sim/xs), and
 *   DIR/xenstored.d<N>   xenstore acting as guest N, while domain N lives;
 *   DIR/hv.pid           its pid.
 * DIR is --dir DIR, or vd_hvc_sim_dir() ($VDISK_SIM_DIR or /run/vdisk-sim),
 * created if missing.
 */
#ifndef VD_SIM_HV_H
#define VD_SIM_HV_H

/*
 * Run the hypervisor in the foreground until SIGTERM or SIGINT, then remove
 * its sockets and pid file. argv[0] is the command name; options:
 * --dir DIR, --help. Returns the process exit code: 0 after a clean stop,
 * 1 on a start-up error (printed), 2 on a usage error.
 * Blocks SIGTERM/SIGINT in the calling thread while it runs (signalfd).
 */
int vd_sim_hv_main(int argc, char **argv);

#endif
