/* Standalone simguest, for testing before (and besides) `vdisk sim guest`. */
#include "sim/guest/simguest.h"

int main(int argc, char **argv)
{
	return vd_simguest_main(argc, argv);
}
