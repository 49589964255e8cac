package ssmbox

import (
	"crypto/sha1"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// boxfs holds the stand-ins installed in every box's bin (and lib.sh, which
// they source from $BOX_ROOT/.ssmbox).
//
//go:embed boxfs
var boxFS embed.FS

// AppID is the Replicated app ID of CircleCI Enterprise on every box (one
// license, so a replica has the same one).
const AppID = "3c1a6e2f9b8d4c7ea0f5d2b6c8e4a1f7"

// App states the fake replicated reports.
const (
	AppStarted = "started"
	AppStopped = "stopped"
)

// Box is one registered instance: a directory tree playing a Services box.
type Box struct {
	s    *Server
	id   string
	root string
	// guarded by s.mu
	online bool
	env    map[string]string
	added  time.Time
}

// AddBox registers instanceID as an SSM managed instance (Online) whose
// filesystem is a fresh directory under the server's t.TempDir(): bin with
// the stand-ins, data seeded with DefaultData, tmp, root (HOME), and the
// Replicated app started. It fails the test on error or a duplicate ID.
func (s *Server) AddBox(instanceID string) *Box {
	s.t.Helper()
	b, err := s.addBox(instanceID)
	if err != nil {
		s.t.Fatalf("ssmbox: AddBox(%q): %v", instanceID, err)
	}
	return b
}

func (s *Server) addBox(id string) (*Box, error) {
	if id == "" || strings.ContainsAny(id, `/\`) || id == "." || id == ".." {
		return nil, fmt.Errorf("not a usable instance ID")
	}
	s.mu.Lock()
	if _, dup := s.boxes[id]; dup {
		s.mu.Unlock()
		return nil, fmt.Errorf("instance already registered")
	}
	s.mu.Unlock()

	root := filepath.Join(s.base, id)
	for _, d := range []string{"bin", "data", "tmp", "root", ".ssmbox", "var/lib/amazon/ssm"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, err
		}
	}
	err := fs.WalkDir(boxFS, "boxfs", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := boxFS.ReadFile(p)
		if err != nil {
			return err
		}
		if d.Name() == "lib.sh" {
			return os.WriteFile(filepath.Join(root, ".ssmbox", "lib.sh"), b, 0o644)
		}
		return os.WriteFile(filepath.Join(root, "bin", d.Name()), b, 0o755)
	})
	if err != nil {
		return nil, fmt.Errorf("install stand-ins: %w", err)
	}
	for rel, content := range DefaultData() {
		p := filepath.Join(root, "data", filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(p, content, 0o644); err != nil {
			return nil, err
		}
	}
	sum := sha1.Sum([]byte("ssmbox secret token for " + id))
	b := &Box{s: s, id: id, root: root, online: true, env: map[string]string{}, added: time.Now().UTC()}
	for name, v := range map[string]string{
		"app_id":       AppID,
		"app_state":    AppStarted,
		"secret_token": hex.EncodeToString(sum[:]),
	} {
		if err := b.writeSetting(name, v); err != nil {
			return nil, err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.boxes[id]; dup {
		return nil, fmt.Errorf("instance already registered")
	}
	s.boxes[id] = b
	return b, nil
}

// InstanceID is the box's EC2 instance ID.
func (b *Box) InstanceID() string { return b.id }

// Root is the directory that is the box's "/" ($BOX_ROOT in its commands).
func (b *Box) Root() string { return b.root }

// Path maps a box path such as "/data/mongodb" to the test machine's file.
func (b *Box) Path(boxPath string) string {
	return filepath.Join(b.root, filepath.FromSlash(path.Clean("/"+boxPath)))
}

// SetOnline sets the box's SSM PingStatus: Online, or ConnectionLost as
// for an instance whose agent cannot be reached. SendCommand to a box that
// is not online fails with InvalidInstanceId, as in real SSM. Commands
// already running carry on.
func (b *Box) SetOnline(online bool) {
	b.s.mu.Lock()
	defer b.s.mu.Unlock()
	b.online = online
}

// Online reports whether the box answers SSM.
func (b *Box) Online() bool {
	b.s.mu.Lock()
	defer b.s.mu.Unlock()
	return b.online
}

// SetFreeSpace sets the free disk space circleci-backup sees, in bytes; it
// fails when that is less than the uncompressed data. A negative value
// means unlimited (the default). The real df is not affected.
func (b *Box) SetFreeSpace(bytes int64) {
	b.s.t.Helper()
	var err error
	if bytes < 0 {
		err = os.Remove(b.settingPath("free_space"))
		if os.IsNotExist(err) {
			err = nil
		}
	} else {
		err = b.writeSetting("free_space", strconv.FormatInt(bytes, 10))
	}
	if err != nil {
		b.s.t.Fatalf("ssmbox: SetFreeSpace: %v", err)
	}
}

// SecretToken is the 40-hex CIRCLE_SECRET_PASSPHRASE that
// `replicated admin get-secret-token` prints: derived from the instance ID
// unless set with SetSecretToken.
func (b *Box) SecretToken() string { return b.readSetting("secret_token") }

// SetSecretToken changes the box's secret token (a replica built from the
// primary's AMI shares the primary's).
func (b *Box) SetSecretToken(token string) {
	b.s.t.Helper()
	if err := b.writeSetting("secret_token", token); err != nil {
		b.s.t.Fatalf("ssmbox: SetSecretToken: %v", err)
	}
}

// AppState is the Replicated app's state as the fake replicated last wrote
// it: AppStarted or AppStopped.
func (b *Box) AppState() string { return b.readSetting("app_state") }

// SetAppState sets the app's state, e.g. AppStopped for a cold replica.
func (b *Box) SetAppState(state string) {
	b.s.t.Helper()
	if err := b.writeSetting("app_state", state); err != nil {
		b.s.t.Fatalf("ssmbox: SetAppState: %v", err)
	}
}

// SetEnv adds a variable to the environment of the box's commands from now
// on, e.g. AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY so
// that the box's aws CLI reaches moto. BOX_ROOT and PATH cannot be changed.
func (b *Box) SetEnv(key, value string) {
	b.s.mu.Lock()
	defer b.s.mu.Unlock()
	b.env[key] = value
}

// WriteCommand installs (or replaces) an executable named name in the box's
// bin, first on PATH, e.g. a circleci-backup that fails or hangs. script is
// the whole file, #! line included.
func (b *Box) WriteCommand(name, script string) {
	b.s.t.Helper()
	if name == "" || strings.ContainsAny(name, `/\`) {
		b.s.t.Fatalf("ssmbox: WriteCommand: bad name %q", name)
	}
	if err := writeAtomic(filepath.Join(b.root, "bin", name), script, 0o755); err != nil {
		b.s.t.Fatalf("ssmbox: WriteCommand: %v", err)
	}
}

// DataTree maps each regular file under the box's /data, by slash path
// relative to it, to its SHA-256 (hex), leaving out the copies earlier
// restores set aside (/data/circleci-restore-*). Symlinks map to
// "symlink:<target>". Compare trees to check that a restore brought back
// what a backup saved.
func (b *Box) DataTree() (map[string]string, error) {
	dataDir := filepath.Join(b.root, "data")
	out := map[string]string{}
	err := filepath.WalkDir(dataDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dataDir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if !strings.Contains(rel, "/") && strings.HasPrefix(rel, "circleci-restore-") {
				return filepath.SkipDir
			}
			return nil
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			out[rel] = "symlink:" + target
		case d.Type().IsRegular():
			content, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(content)
			out[rel] = hex.EncodeToString(sum[:])
		}
		return nil
	})
	return out, err
}

// RestoreAsideDirs lists the box paths of the directories circleci-restore
// moved earlier data into (/data/circleci-restore-*), oldest first.
func (b *Box) RestoreAsideDirs() []string {
	matches, _ := filepath.Glob(filepath.Join(b.root, "data", "circleci-restore-*"))
	slices.Sort(matches)
	out := make([]string, 0, len(matches))
	for _, m := range matches {
		out = append(out, "/data/"+filepath.Base(m))
	}
	return out
}

func (b *Box) settingPath(name string) string { return filepath.Join(b.root, ".ssmbox", name) }

func (b *Box) writeSetting(name, value string) error {
	return writeAtomic(b.settingPath(name), value+"\n", 0o644)
}

func (b *Box) readSetting(name string) string {
	v, err := os.ReadFile(b.settingPath(name))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(v))
}

// writeAtomic replaces a file that a running script may be reading.
func writeAtomic(p, content string, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".*")
	if err != nil {
		return err
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return err
	}
	if err := os.Rename(f.Name(), p); err != nil {
		os.Remove(f.Name())
		return err
	}
	return nil
}

// environ is the environment of the box's commands; s.mu is held.
func (b *Box) environ() []string {
	env := map[string]string{
		"LANG":                      "C.UTF-8",
		"HOME":                      filepath.Join(b.root, "root"),
		"USER":                      "root",
		"LOGNAME":                   "root",
		"SHELL":                     "/bin/sh",
		"TMPDIR":                    filepath.Join(b.root, "tmp"),
		"AWS_EC2_METADATA_DISABLED": "true",
	}
	for _, k := range hostEnv {
		if v, ok := os.LookupEnv(k); ok {
			env[k] = v
		}
	}
	maps.Copy(env, b.env)
	hostPath := os.Getenv("PATH")
	if hostPath == "" {
		hostPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	env["PATH"] = filepath.Join(b.root, "bin") + string(os.PathListSeparator) + hostPath
	env["BOX_ROOT"] = b.root
	out := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, k+"="+env[k])
	}
	return out
}

// wire is the box's InstanceInformation; s.mu is held.
func (b *Box) wire() map[string]any {
	ping := "Online"
	if !b.online {
		ping = "ConnectionLost"
	}
	now := time.Now().UTC()
	if !b.online {
		now = b.added
	}
	return map[string]any{
		"InstanceId":        b.id,
		"PingStatus":        ping,
		"LastPingDateTime":  epoch(now),
		"AgentVersion":      "3.3.1142.0",
		"IsLatestVersion":   true,
		"PlatformType":      "Linux",
		"PlatformName":      "Ubuntu",
		"PlatformVersion":   "14.04",
		"ResourceType":      "EC2Instance",
		"ComputerName":      "ip-" + strings.ReplaceAll(b.id, "i-", "") + ".ec2.internal",
		"IPAddress":         "",
		"AssociationStatus": "",
		"RegistrationDate":  epoch(b.added),
	}
}

// DefaultData is the fake datastore every box's /data starts with: a few
// directories of deterministic content (about 200 KB), keyed by slash path
// relative to /data.
func DefaultData() map[string][]byte {
	files := map[string][]byte{
		"postgresql/9.5/main/PG_VERSION": []byte("9.5\n"),
		"replicated/app-id":              []byte(AppID + "\n"),
		"circle/VERSION":                 []byte("1.48.2\n"),
	}
	for rel, size := range map[string]int{
		"mongodb/circle_ghe.0":                96 << 10,
		"mongodb/circle_ghe.ns":               16 << 10,
		"mongodb/journal/j._0":                32 << 10,
		"postgresql/9.5/main/base/16384/2619": 24 << 10,
		"redis/dump.rdb":                      12 << 10,
		"nomad/server/raft/raft.db":           8 << 10,
	} {
		files[rel] = pseudoContent(rel, size)
	}
	return files
}

// pseudoContent is size bytes derived from name: lines of a counter and a
// hash, so bzip2 has something to compress but not everything.
func pseudoContent(name string, size int) []byte {
	out := make([]byte, 0, size+80)
	for i := 0; len(out) < size; i++ {
		sum := sha256.Sum256([]byte(name + "#" + strconv.Itoa(i)))
		out = fmt.Appendf(out, "%s record %06d %x\n", path.Base(name), i, sum[:12])
	}
	return out[:size]
}

// SetOS writes the box's /etc/os-release, e.g. "ubuntu", "22.04" or
// "amzn", "2023": what a script reads to tell the distribution.
func (b *Box) SetOS(id, version string) {
	b.s.t.Helper()
	content := fmt.Sprintf("NAME=%q\nID=%s\nVERSION_ID=%q\n", id, id, version)
	if err := writeIn(filepath.Join(b.root, "etc", "os-release"), content); err != nil {
		b.s.t.Fatalf("ssmbox: SetOS: %v", err)
	}
}

// SetInterface gives the box's OS a network device dev with MAC address
// mac (its /sys/class/net/<dev>/address) and, if given, addresses (CIDRs)
// as the stand-in ip reports them.
func (b *Box) SetInterface(dev, mac string, addrs ...string) {
	b.s.t.Helper()
	if dev == "" || strings.ContainsAny(dev, `/\`) {
		b.s.t.Fatalf("ssmbox: SetInterface: bad device %q", dev)
	}
	if err := writeIn(filepath.Join(b.root, "sys", "class", "net", dev, "address"), strings.ToLower(mac)+"\n"); err != nil {
		b.s.t.Fatalf("ssmbox: SetInterface: %v", err)
	}
	if len(addrs) > 0 {
		if err := writeIn(filepath.Join(b.root, ".ssmbox", "net", dev+".addrs"), strings.Join(addrs, "\n")+"\n"); err != nil {
			b.s.t.Fatalf("ssmbox: SetInterface: %v", err)
		}
	}
}

// Addresses are the CIDRs the box's OS has on dev, as the stand-in ip
// (and netplan apply) left them.
func (b *Box) Addresses(dev string) []string {
	raw, err := os.ReadFile(filepath.Join(b.root, ".ssmbox", "net", dev+".addrs"))
	if err != nil {
		return nil
	}
	return strings.Fields(string(raw))
}

// HasAddress reports whether any device of the box's OS has ip.
func (b *Box) HasAddress(ip string) bool {
	devs, _ := os.ReadDir(filepath.Join(b.root, "sys", "class", "net"))
	for _, d := range devs {
		for _, c := range b.Addresses(d.Name()) {
			if strings.SplitN(c, "/", 2)[0] == ip {
				return true
			}
		}
	}
	return false
}

// writeIn writes a box file, making its directory first.
func writeIn(p, content string) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return writeAtomic(p, content, 0o644)
}
