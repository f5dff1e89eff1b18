#!/bin/busybox sh
# /init of weft's VM tier. It mounts this machine's files read-only over
# 9p, gives the tests writable /run and /tmp, lets the kernel load any
# module from Debian's tree on demand, runs the script the host wrote into
# the results directory, and powers off. Any failure says what failed.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
fail() { echo "weft-vm: $*"; poweroff -f; sleep 10; }
for m in {{.BootModules}}; do modprobe "$m" || fail "loading module $m"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=524288 hostroot /newroot ||
	fail "mounting this machine's files (9p tag hostroot)"
R=/newroot
# The kernel runs /sbin/modprobe (busybox here) for every module it wants:
# it finds Debian's module tree through this bind mount.
mkdir -p /lib/modules/{{.Version}}
mount --bind "$R{{.ModulesDir}}" /lib/modules/{{.Version}} || fail "binding the module tree {{.ModulesDir}}"
for m in {{.Preload}}; do modprobe "$m" || fail "loading module $m"; done
# The tests get a fresh tmpfs on /run, /tmp and /var/tmp; what must stay
# visible through them (the repository, the run's binaries, wherever they
# are) is bound aside first and put back after.
i=0
for p in {{.Keep}}; do
	if [ -L "$R$p" ]; then
		readlink "$R$p" > "/keep/$i.link" # a symlink (../shared): made again
	else
		mkdir -p "/keep/$i" && mount --bind "$R$p" "/keep/$i" || fail "keeping $p visible"
	fi
	i=$((i+1))
done
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs shm $R/dev/shm
for d in run tmp var/tmp; do mount -t tmpfs "vm-$d" "$R/$d" || fail "mounting a tmpfs on /$d"; done
i=0
for p in {{.Keep}}; do
	if [ -L "$R$p" ] || [ -e "$R$p" ]; then
		: # not under a tmpfs of the VM's
	elif [ -f "/keep/$i.link" ]; then
		mkdir -p "$(dirname "$R$p")" && ln -s "$(cat "/keep/$i.link")" "$R$p" || fail "putting $p back"
	else
		mkdir -p "$R$p" && mount --bind "/keep/$i" "$R$p" || fail "putting $p back"
	fi
	i=$((i+1))
done
mkdir -p $R/run/weft-vm
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 results $R/run/weft-vm ||
	fail "mounting the results directory (9p tag results)"
ip link set lo up
hostname weft-vm
echo "weft-vm: kernel $(uname -r) up, running the tests"
chroot $R /bin/bash /run/weft-vm/run.sh
sync
poweroff -f
