// Package iam holds the bot's IAM policy. policy.json is its one copy: the
// README links it, `bot iam-policy` prints it filled in for a config, a
// CloudFormation template can read it (its ${Name} placeholders are
// Fn::Sub's), and the end-to-end tests evaluate every AWS call the bot
// makes against it (internal/testenv/iamcheck). IAM JSON has no comments:
// why.json says, by Sid, why a statement that no test exercises stays.
//
// Placeholders are ${Name} with no colon (IAM's own policy variables, such
// as ${aws:username}, have one and are left alone):
//
//   - a string that is exactly "${Name}" inside a list becomes the name's
//     values, none to many (["${KmsKeys}"] is the configured keys);
//   - "${Name}" inside a longer string takes the name's one value;
//   - a statement that needs a name with no value is left out (no
//     backup.bucket: no TarballBucket statement), as is one whose Resource
//     or a condition's values come out empty: it could match nothing.
package iam

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// Template is policy.json as committed, placeholders and all.
//
//go:embed policy.json
var Template []byte

// WhyJSON is why.json: Sid -> why the statement stays although no test
// exercises it.
//
//go:embed why.json
var WhyJSON []byte

// Why returns why.json as a map.
func Why() (map[string]string, error) {
	var m map[string]string
	if err := json.Unmarshal(WhyJSON, &m); err != nil {
		return nil, fmt.Errorf("iam: why.json: %w", err)
	}
	return m, nil
}

// Policy is an identity-based IAM policy document.
type Policy struct {
	Version   string      `json:"Version"`
	Statement []Statement `json:"Statement"`
}

// Statement is one statement. Principal does not occur in an identity
// policy and is refused when parsing.
type Statement struct {
	Sid         string  `json:"Sid,omitempty"`
	Effect      string  `json:"Effect"`
	Action      Strings `json:"Action,omitzero"`
	NotAction   Strings `json:"NotAction,omitzero"`
	Resource    Strings `json:"Resource,omitzero"`
	NotResource Strings `json:"NotResource,omitzero"`
	// Condition: operator -> condition key -> values (ORed).
	Condition map[string]map[string]Strings `json:"Condition,omitempty"`
}

// Strings is IAM's "a string or a list of strings". It remembers which it
// was so that a rendered policy keeps the template's shape. Booleans and
// numbers (as in {"Bool": {"aws:SecureTransport": true}}) read as strings.
type Strings struct {
	Values []string
	List   bool
}

func (s Strings) IsZero() bool { return len(s.Values) == 0 && !s.List }

func (s Strings) MarshalJSON() ([]byte, error) {
	if !s.List && len(s.Values) == 1 {
		return json.Marshal(s.Values[0])
	}
	if s.Values == nil {
		return []byte("[]"), nil
	}
	return json.Marshal(s.Values)
}

func (s *Strings) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '[' {
		var raw []json.RawMessage
		if err := json.Unmarshal(b, &raw); err != nil {
			return err
		}
		s.List, s.Values = true, make([]string, 0, len(raw))
		for _, r := range raw {
			v, err := scalar(r)
			if err != nil {
				return err
			}
			s.Values = append(s.Values, v)
		}
		return nil
	}
	v, err := scalar(b)
	if err != nil {
		return err
	}
	s.List, s.Values = false, []string{v}
	return nil
}

func scalar(b json.RawMessage) (string, error) {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return "", err
	}
	switch x := v.(type) {
	case string:
		return x, nil
	case bool:
		return fmt.Sprint(x), nil
	case float64:
		return string(bytes.TrimSpace(b)), nil
	default:
		return "", fmt.Errorf("want a string, a boolean or a number, got %s", b)
	}
}

// Parse reads a policy document and checks its shape: known fields only,
// Effect Allow or Deny, Action or NotAction, Resource or NotResource, Sids
// unique.
func Parse(doc []byte) (Policy, error) {
	var p Policy
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return Policy{}, fmt.Errorf("iam: policy: %w", err)
	}
	if p.Version != "2012-10-17" {
		return Policy{}, fmt.Errorf("iam: policy: Version %q, want 2012-10-17 (the only one with policy variables)", p.Version)
	}
	seen := map[string]bool{}
	for i, s := range p.Statement {
		name := s.Sid
		if name == "" {
			name = fmt.Sprintf("statement %d", i)
		} else if seen[s.Sid] {
			return Policy{}, fmt.Errorf("iam: policy: Sid %q appears twice", s.Sid)
		}
		seen[s.Sid] = true
		if s.Effect != "Allow" && s.Effect != "Deny" {
			return Policy{}, fmt.Errorf("iam: policy: %s: Effect %q, want Allow or Deny", name, s.Effect)
		}
		if s.Action.IsZero() == s.NotAction.IsZero() {
			return Policy{}, fmt.Errorf("iam: policy: %s: needs exactly one of Action and NotAction", name)
		}
		if s.Resource.IsZero() == s.NotResource.IsZero() {
			return Policy{}, fmt.Errorf("iam: policy: %s: needs exactly one of Resource and NotResource", name)
		}
	}
	return p, nil
}

// Values fills the placeholders: each name has zero to many values. Every
// placeholder the template uses must be a key, so that a misspelt one is
// an error rather than a statement quietly left out.
type Values map[string][]string

// Omitted is a statement Render left out and the placeholders it needed.
type Omitted struct {
	Sid   string
	Needs []string
}

var placeholder = regexp.MustCompile(`\$\{([A-Za-z][A-Za-z0-9]*)\}`)

// Render fills tpl's placeholders with v and returns the policy as JSON,
// with the statements it left out.
func Render(tpl []byte, v Values) ([]byte, []Omitted, error) {
	p, omitted, err := RenderPolicy(tpl, v)
	if err != nil {
		return nil, nil, err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(p); err != nil {
		return nil, nil, err
	}
	return buf.Bytes(), omitted, nil
}

// RenderPolicy is Render without the encoding.
func RenderPolicy(tpl []byte, v Values) (Policy, []Omitted, error) {
	p, err := Parse(tpl)
	if err != nil {
		return Policy{}, nil, err
	}
	out := Policy{Version: p.Version}
	var omitted []Omitted
	for _, s := range p.Statement {
		r := renderer{v: v}
		s.Action = r.strings(s.Action)
		s.NotAction = r.strings(s.NotAction)
		s.Resource = r.strings(s.Resource)
		s.NotResource = r.strings(s.NotResource)
		if s.Condition != nil {
			c := map[string]map[string]Strings{}
			for op, keys := range s.Condition {
				c[op] = map[string]Strings{}
				for k, vals := range keys {
					k2 := r.string(k)
					if len(k2) != 1 {
						r.fail(fmt.Errorf("condition key %q: a placeholder in a key must have one value", k))
						continue
					}
					vs := r.strings(vals)
					if len(vs.Values) == 0 {
						r.empty = true
					}
					c[op][k2[0]] = vs
				}
			}
			s.Condition = c
		}
		if r.err != nil {
			return Policy{}, nil, fmt.Errorf("iam: statement %s: %w", s.Sid, r.err)
		}
		for _, field := range []Strings{s.Action, s.NotAction, s.Resource, s.NotResource} {
			if field.Values != nil && len(field.Values) == 0 {
				r.empty = true
			}
		}
		if len(r.missing) > 0 || r.empty {
			needs := slices.Sorted(func(yield func(string) bool) {
				for n := range r.missing {
					if !yield(n) {
						return
					}
				}
			})
			omitted = append(omitted, Omitted{Sid: s.Sid, Needs: needs})
			continue
		}
		out.Statement = append(out.Statement, s)
	}
	return out, omitted, nil
}

type renderer struct {
	v       Values
	missing map[string]bool // placeholders with no value this statement used
	empty   bool            // a list came out empty
	err     error
}

func (r *renderer) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

func (r *renderer) need(name string) {
	if r.missing == nil {
		r.missing = map[string]bool{}
	}
	r.missing[name] = true
}

func (r *renderer) strings(s Strings) Strings {
	if s.IsZero() {
		return s
	}
	out := Strings{List: s.List, Values: []string{}}
	for _, e := range s.Values {
		for _, x := range r.string(e) {
			if !slices.Contains(out.Values, x) {
				out.Values = append(out.Values, x)
			}
		}
	}
	if len(out.Values) == 0 {
		// Every element was a placeholder with no value: name them.
		for _, e := range s.Values {
			if m := placeholder.FindStringSubmatch(e); m != nil && m[0] == e {
				r.need(m[1])
			}
		}
	}
	return out
}

// string expands one element: a whole-string placeholder to its values, an
// embedded one to its single value.
func (r *renderer) string(e string) []string {
	if m := placeholder.FindStringSubmatch(e); m != nil && m[0] == e {
		vals, ok := r.v[m[1]]
		if !ok {
			r.fail(fmt.Errorf("unknown placeholder ${%s}", m[1]))
			return nil
		}
		return nonEmpty(vals)
	}
	ok := true
	out := placeholder.ReplaceAllStringFunc(e, func(ph string) string {
		name := ph[2 : len(ph)-1]
		vals, known := r.v[name]
		vals = nonEmpty(vals)
		switch {
		case !known:
			r.fail(fmt.Errorf("unknown placeholder ${%s}", name))
			ok = false
		case len(vals) == 0:
			r.need(name)
			ok = false
		case len(vals) > 1:
			r.fail(fmt.Errorf("${%s} has %d values and is used inside %q: only a whole-string placeholder can be a list", name, len(vals), e))
			ok = false
		default:
			return vals[0]
		}
		return ph
	})
	if !ok {
		return nil
	}
	return []string{out}
}

func nonEmpty(vals []string) []string {
	var out []string
	for _, v := range vals {
		if v != "" {
			out = append(out, v)
		}
	}
	return out
}

// Placeholders lists the placeholder names tpl uses, sorted.
func Placeholders(tpl []byte) []string {
	seen := map[string]bool{}
	for _, m := range placeholder.FindAllSubmatch(tpl, -1) {
		seen[string(m[1])] = true
	}
	var out []string
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// ErrWildcard is returned for a value that would act as a wildcard in a
// StringLike condition or an ARN.
var ErrWildcard = errors.New("contains a character IAM reads as a wildcard or a variable (*, ? or $)")

func checkLiteral(key, v string) error {
	if strings.ContainsAny(v, "*?$") {
		return fmt.Errorf("%s %q %w", key, v, ErrWildcard)
	}
	return nil
}
