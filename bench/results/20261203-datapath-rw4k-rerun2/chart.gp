set terminal pngcairo size 1400,700 noenhanced
set output "/tmp/rerun-2/chart.png"
set title "vdisk bench: IOPS per workload (fio = ceiling, base = 1 queue event mode, prod = multi-queue + polling)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set logscale y
set ylabel "IOPS (log)"
set grid ytics
set xtics rotate by -30
set key outside right
plot "/tmp/rerun-2/chart.dat" using 2:xtic(1) title columnheader(2), "/tmp/rerun-2/chart.dat" using 3:xtic(1) title columnheader(3), "/tmp/rerun-2/chart.dat" using 4:xtic(1) title columnheader(4), "/tmp/rerun-2/chart.dat" using 5:xtic(1) title columnheader(5), "/tmp/rerun-2/chart.dat" using 6:xtic(1) title columnheader(6), "/tmp/rerun-2/chart.dat" using 7:xtic(1) title columnheader(7), "/tmp/rerun-2/chart.dat" using 8:xtic(1) title columnheader(8), "/tmp/rerun-2/chart.dat" using 9:xtic(1) title columnheader(9), "/tmp/rerun-2/chart.dat" using 10:xtic(1) title columnheader(10), "/tmp/rerun-2/chart.dat" using 11:xtic(1) title columnheader(11), "/tmp/rerun-2/chart.dat" using 12:xtic(1) title columnheader(12), "/tmp/rerun-2/chart.dat" using 13:xtic(1) title columnheader(13), "/tmp/rerun-2/chart.dat" using 14:xtic(1) title columnheader(14)
