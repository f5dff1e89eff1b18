package vm

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// bootModules are what the initramfs loads before it can mount this
// machine's file system: virtio's PCI transport and 9p over it. Every
// other module is loaded from the mounted tree, on demand.
var bootModules = []string{"virtio_pci", "9pnet_virtio", "9p"}

// archive is an initramfs being built: the files of a cpio "newc" archive,
// the format the kernel unpacks.
type archive struct {
	entries map[string]entry
}

type entry struct {
	mode uint32 // file type and permissions, as in stat(2)
	data []byte // contents, or a symlink's target
}

const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
)

func newArchive() *archive { return &archive{entries: map[string]entry{}} }

// add puts a file (and its parent directories) in the archive.
func (a *archive) add(name string, mode uint32, data []byte) {
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	for dir := path.Dir(name); dir != "." && dir != "/"; dir = path.Dir(dir) {
		if _, ok := a.entries[dir]; !ok {
			a.entries[dir] = entry{mode: modeDir | 0o755}
		}
	}
	a.entries[name] = entry{mode: mode, data: data}
}

// writeTo writes the archive in cpio newc format, gzip-compressed, parents
// before children.
func (a *archive) writeTo(w io.Writer) error {
	zw := gzip.NewWriter(w)
	names := make([]string, 0, len(a.entries))
	for name := range a.entries {
		names = append(names, name)
	}
	sort.Strings(names) // a parent sorts before what it holds
	ino := 1
	header := func(name string, e entry) error {
		// newc: magic, then 13 eight-digit hex fields, the NUL-terminated
		// name, padding to 4 bytes, the data, padding to 4 bytes.
		nlink := 1
		if e.mode&modeDir != 0 {
			nlink = 2
		}
		fields := []int{ino, int(e.mode), 0, 0, nlink, 0, len(e.data), 0, 0, 0, 0, len(name) + 1, 0}
		var b bytes.Buffer
		b.WriteString("070701")
		for _, f := range fields {
			fmt.Fprintf(&b, "%08x", f)
		}
		b.WriteString(name)
		b.WriteByte(0)
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
		b.Write(e.data)
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
		ino++
		_, err := zw.Write(b.Bytes())
		return err
	}
	for _, name := range names {
		if err := header(name, a.entries[name]); err != nil {
			return err
		}
	}
	if err := header("TRAILER!!!", entry{}); err != nil {
		return err
	}
	return zw.Close()
}

// staticBinary checks file is a statically linked ELF program: the
// initramfs has no libraries for it to load.
func staticBinary(file string) error {
	f, err := elf.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked", file)
		}
	}
	return nil
}

// Initramfs is what the VM boots into before it mounts this machine's
// files: busybox, the modules for 9p, and the init script.
type Initramfs struct {
	Kernel Kernel
	// Busybox is a statically linked busybox (Debian's busybox-static).
	Busybox string
	// Init is the /init script.
	Init []byte
}

// Build writes the gzip-compressed cpio archive to file.
func (i Initramfs) Build(file string) error {
	if err := staticBinary(i.Busybox); err != nil {
		return fmt.Errorf("busybox for the VM's initramfs: %v; install Debian's busybox-static (make deps does)", err)
	}
	a := newArchive()
	busybox, err := os.ReadFile(i.Busybox)
	if err != nil {
		return err
	}
	a.add("bin/busybox", modeFile|0o755, busybox)
	a.add("sbin/modprobe", modeSymlink|0o777, []byte("/bin/busybox"))
	a.add("init", modeFile|0o755, i.Init)
	for _, dir := range []string{"proc", "sys", "dev", "newroot", "tmp"} {
		a.add(dir, modeDir|0o755, nil)
	}
	mods, err := i.Kernel.ModuleClosure(bootModules...)
	if err != nil {
		return err
	}
	var dep strings.Builder
	for _, m := range mods {
		data, err := os.ReadFile(filepath.Join(i.Kernel.ModulesDir(), m))
		if err != nil {
			return err
		}
		a.add(path.Join("lib/modules", i.Kernel.Version, m), modeFile|0o644, data)
	}
	// busybox modprobe reads the dependencies of the boot modules from a
	// modules.dep holding just them.
	all, err := os.ReadFile(filepath.Join(i.Kernel.ModulesDir(), "modules.dep"))
	if err != nil {
		return err
	}
	wanted := map[string]bool{}
	for _, m := range mods {
		wanted[m] = true
	}
	for _, line := range strings.Split(string(all), "\n") {
		if file, _, ok := strings.Cut(line, ":"); ok && wanted[file] {
			dep.WriteString(line + "\n")
		}
	}
	a.add(path.Join("lib/modules", i.Kernel.Version, "modules.dep"), modeFile|0o644, []byte(dep.String()))
	out, err := os.Create(file)
	if err != nil {
		return err
	}
	if err := a.writeTo(out); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
