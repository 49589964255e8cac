package commands

import "strings"

const (
	flagDryRun       = "--dry-run"
	flagTo           = "--to"
	flagForceUnknown = "--force-unknown"
	flagForceStale   = "--force-stale"
	flagSubnet       = "--subnet"
	flagRebuild      = "--rebuild"
	flagHelp         = "--help"
)

type flag struct {
	typed    string // as typed, without any "=value", for messages
	name     string // normalised: "--" + lowercased name, whatever dashes were typed
	value    string // after "=", or the next word for --to
	hasValue bool
}

// parseFlag reads "--name", "—name", "–name", "-name" and "--name=value"
// alike: all our flags are long, so one dash or a typographic dash can
// only mean the same thing.
func parseFlag(tok string) flag {
	typed, value, has := strings.Cut(tok, "=")
	name := "--" + asciiLower(strings.TrimLeftFunc(typed, isDash))
	return flag{typed: typed, name: name, value: value, hasValue: has}
}

// splitWords separates flags from positional words. Flags may come
// anywhere, since people add --dry-run wherever they remember to.
func splitWords(toks []string) (words []string, flags []flag) {
	for i := 0; i < len(toks); i++ {
		if !isFlag(toks[i]) {
			words = append(words, toks[i])
			continue
		}
		f := parseFlag(toks[i])
		if (f.name == flagTo || f.name == flagSubnet) && !f.hasValue && i+1 < len(toks) && !isFlag(toks[i+1]) {
			f.value, f.hasValue = toks[i+1], true
			i++
		}
		flags = append(flags, f)
	}
	return words, flags
}

func hasFlag(flags []flag, name string) bool {
	for _, f := range flags {
		if f.name == name {
			return true
		}
	}
	return false
}

// flagsOf lists the flags spec takes, for suggestions.
func flagsOf(s Spec) []string {
	fs := []string{flagHelp}
	if s.Class == ClassDestructive {
		fs = append(fs, flagDryRun)
	}
	if s.Name == Failover {
		fs = append(fs, flagTo, flagForceUnknown, flagForceStale)
	}
	if s.Name == ReplicaBuild {
		fs = append(fs, flagSubnet)
	}
	if s.Name == Restore {
		fs = append(fs, flagRebuild)
	}
	return fs
}

var destructiveNames = func() string {
	var names []string
	for _, s := range specs {
		if s.Class == ClassDestructive {
			names = append(names, string(s.Name))
		}
	}
	return strings.Join(names, ", ")
}()

// applyFlags checks flags against c.Name and sets them on c. The first
// problem, in the order typed, is the one reported.
func applyFlags(c *Command, flags []flag) *UsageError {
	spec := specByName[c.Name]
	seen := make(map[string]bool, len(flags))
	for _, f := range flags {
		switch f.name {
		case flagDryRun, flagTo, flagForceUnknown, flagForceStale, flagSubnet, flagRebuild, flagHelp:
		default:
			return problemf(c.Name, "unknown flag %s%s", quote(f.typed), didYouMean(f.name, flagsOf(spec)))
		}
		if seen[f.name] {
			return problemf(c.Name, "%s is given twice", f.name)
		}
		seen[f.name] = true
		if f.name != flagTo && f.name != flagSubnet && f.hasValue {
			return problemf(c.Name, "%s takes no value", f.name)
		}
		switch f.name {
		case flagDryRun:
			if spec.Class != ClassDestructive {
				return problemf(c.Name, "--dry-run only applies to commands that change things and need a second person's approval (%s)", destructiveNames)
			}
			c.DryRun = true
		case flagRebuild:
			if c.Name != Restore {
				return problemf(c.Name, "--rebuild only applies to restore")
			}
			c.Rebuild = true
		case flagForceUnknown:
			if c.Name != Failover {
				return problemf(c.Name, "--force-unknown only applies to failover")
			}
			c.ForceUnknown = true
		case flagForceStale:
			if c.Name != Failover {
				return problemf(c.Name, "--force-stale only applies to failover")
			}
			c.ForceStale = true
		case flagSubnet:
			if c.Name != ReplicaBuild {
				return problemf(c.Name, "--subnet only applies to replica build")
			}
			if f.value == "" {
				return problemf(c.Name, "--subnet needs a subnet ID, e.g. --subnet subnet-0123456789abcdef0")
			}
			id, ok := awsID(f.value, "subnet-")
			if !ok {
				return problemf(c.Name, "%s is not a subnet ID (subnet- and 8 or 17 hex digits, e.g. subnet-0123456789abcdef0)", quote(f.value))
			}
			c.Subnet = id
		case flagTo:
			if c.Name != Failover {
				return problemf(c.Name, "--to only applies to failover")
			}
			if f.value == "" {
				return problemf(c.Name, "--to needs an instance ID, e.g. --to i-0123456789abcdef0")
			}
			id, problem := parseInstanceID(f.value)
			if problem != "" {
				return problemf(c.Name, "%s", problem)
			}
			c.Target = id
		}
	}
	return nil
}
