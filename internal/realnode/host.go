package realnode

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Sysctls are the kernel settings the kubelet changes on the whole host
// (it sets them to what it needs at start): recorded before, restored after.
var Sysctls = []string{"vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops"}

// ReadSysctls reads Sysctls.
func ReadSysctls() (map[string]string, error) {
	values := map[string]string{}
	for _, name := range Sysctls {
		b, err := os.ReadFile("/proc/sys/" + name)
		if err != nil {
			return nil, err
		}
		values[name] = strings.TrimSpace(string(b))
	}
	return values, nil
}

func writeSysctls(values map[string]string) error {
	var errs []error
	for name, value := range values {
		if err := os.WriteFile("/proc/sys/"+name, []byte(value), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restoring %s=%s: %w", name, value, err))
		}
	}
	return errors.Join(errs...)
}

// cgroupHierarchies are the cgroup v1 hierarchies mounted under
// /sys/fs/cgroup (and the v2 one of a hybrid host).
func cgroupHierarchies() ([]string, error) {
	entries, err := os.ReadDir("/sys/fs/cgroup")
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() { // symlinks such as cpu,cpuacct are not
			dirs = append(dirs, filepath.Join("/sys/fs/cgroup", e.Name()))
		}
	}
	return dirs, nil
}

// createCgroupRoot creates the kubelet's cgroup root (cgroupRoot: it must
// exist) in every hierarchy, so that the node's kubepods cgroups are all
// under it and nothing else on the host is touched.
func createCgroupRoot(name string) error {
	hierarchies, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	for _, h := range hierarchies {
		dir := filepath.Join(h, name)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("creating cgroup %s: %w", dir, err)
		}
		if filepath.Base(h) == "cpuset" {
			// A new cpuset has no CPUs and memory nodes until given some.
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(h, f))
				if err != nil {
					return err
				}
				if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
					return fmt.Errorf("setting %s of %s: %w", f, dir, err)
				}
			}
		}
	}
	return nil
}

// CgroupDirs lists the cgroups named name (the kubelet's cgroup root) and
// everything below them, in every hierarchy.
func CgroupDirs(name string) ([]string, error) {
	hierarchies, err := cgroupHierarchies()
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, h := range hierarchies {
		root := filepath.Join(h, name)
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			if d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return dirs, nil
}

// removeCgroups kills what is left in the cgroups under name and removes
// them, deepest first, retrying while the kernel still counts exiting tasks.
func removeCgroups(name string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		dirs, err := CgroupDirs(name)
		if err != nil {
			return err
		}
		if len(dirs) == 0 {
			return nil
		}
		sort.Slice(dirs, func(i, j int) bool { return strings.Count(dirs[i], "/") > strings.Count(dirs[j], "/") })
		var last error
		for _, dir := range dirs {
			killCgroup(dir)
			if err := unix.Rmdir(dir); err != nil && !errors.Is(err, unix.ENOENT) {
				last = fmt.Errorf("removing cgroup %s: %w", dir, err)
			}
		}
		if last == nil {
			continue
		}
		if time.Now().After(deadline) {
			return last
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func killCgroup(dir string) {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return
	}
	for _, field := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(field); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// MountsUnder lists the mount points at or below dir, deepest first.
func MountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var mounts []string
	scanner := bufio.NewScanner(f)
	scanner.Buffer(make([]byte, 64<<10), 1<<20)
	for scanner.Scan() {
		fields := strings.Fields(scanner.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountPath(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	if err := scanner.Err(); err != nil {
		return nil, err
	}
	sort.SliceStable(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	return mounts, nil
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountUnder unmounts everything at or below dir (a bind mount of the
// kubelet's root dir, pods' volumes, containerd's overlays and network
// namespace handles), deepest first; stacked mounts need several passes.
func unmountUnder(dir string) error {
	for pass := 0; pass < 10; pass++ {
		mounts, err := MountsUnder(dir)
		if err != nil || len(mounts) == 0 {
			return err
		}
		for _, mp := range mounts {
			if err := unix.Unmount(mp, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				_ = unix.Unmount(mp, unix.MNT_DETACH)
			}
		}
	}
	mounts, err := MountsUnder(dir)
	if err == nil && len(mounts) > 0 {
		err = fmt.Errorf("still mounted: %s", strings.Join(mounts, ", "))
	}
	return err
}

// ProcessesUsing lists the processes whose command line mentions dir (the
// cluster's daemons and containerd's shims, whose arguments name the work
// dir), other than this one.
func ProcessesUsing(dir string) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(string(cmdline), dir) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// killProcessesUsing SIGKILLs ProcessesUsing(dir) until none is left.
func killProcessesUsing(dir string) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		pids, err := ProcessesUsing(dir)
		if err != nil || len(pids) == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes of %s still running after SIGKILL: %v", dir, pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// HostPaths are the host paths that the node's daemons create whatever
// they are told (the kubelet's device-plugin socket and /var/log/containers
// links, the CNI result cache of containerd 1.6, containerd's shim sockets,
// the default flex-volume dir) and that `ip netns add` mounts. Stop removes
// those that did not exist before Start; one that existed is left alone.
var HostPaths = []string{
	"/var/lib/kubelet",
	"/var/log/containers",
	"/var/lib/cni",
	"/run/containerd",
	"/usr/libexec/kubernetes",
	"/run/netns",
}

// removeCreated removes the host paths Start found missing. /run/netns is a
// mount that other namespaces may share: it goes only when empty.
func removeCreated(paths []string) error {
	var errs []error
	for _, p := range paths {
		if p == "/run/netns" {
			entries, err := os.ReadDir(p)
			if err != nil || len(entries) > 0 {
				continue
			}
			if err := unmountUnder(p); err != nil {
				errs = append(errs, err)
				continue
			}
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
