// Package cloudformation makes circlebot.yaml, the stack of two bot
// replicas, from circlebot.in.yaml, the bot's IAM policy
// (deploy/iam/policy.json, its one copy) and the systemd unit
// (deploy/systemd/circlebot.service). The policy's placeholders become the
// stack's parameters, pseudo parameters and the table; a statement that
// `bot iam-policy` would leave out for an unset setting is left out by a
// condition on the parameter, so the stack's role has exactly the policy
// `bot iam-policy` prints for the config the stack renders. The policy is
// split, each statement whole, into as many customer-managed policies
// (BotPolicy1…N) as keep each within IAM's size at the parameters' longest
// values. The stack test (stack_test.go) creates the stack in moto and
// checks that.
package cloudformation

//go:generate go run ./gen

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/circlebot/circlebot/deploy/iam"
)

// Skeleton is circlebot.in.yaml.
//
//go:embed circlebot.in.yaml
var Skeleton []byte

// Committed is circlebot.yaml as committed.
//
//go:embed circlebot.yaml
var Committed []byte

// Param is how the template gives a policy placeholder its value.
type Param struct {
	// Ref is what the placeholder is: a pseudo parameter (AWS::Region), a
	// template parameter or a resource whose Ref is the value.
	Ref string
	// Optional: the parameter may be empty, and then the statements that
	// need it are left out (condition Has<Ref>).
	Optional bool
	// List: a CommaDelimitedList, only ever a whole list element.
	List bool
	// Max is the longest value the policy's size estimate allows for (a
	// list: all its elements, quoted, with their commas). A template
	// parameter that is a String declares it as its MaxLength, so
	// CloudFormation refuses a longer value before IAM could refuse a
	// policy document; the lists' bounds are in their descriptions.
	Max int
}

// Params maps every placeholder of policy.json. A placeholder missing
// here fails generation (and the test that the template is current).
var Params = map[string]Param{
	"Partition":       {Ref: "AWS::Partition", Max: 10}, // aws-us-gov,
	"Region":          {Ref: "AWS::Region", Max: 16},    // ap-southeast-5 is 14
	"Account":         {Ref: "AWS::AccountId", Max: 12},
	"NameTag":         {Ref: "ServicesBoxNameTag", Max: 256},             // an EC2 tag value's limit
	"ReplicaTag":      {Ref: "ReplicaNameTag", Optional: true, Max: 256}, // an EC2 tag value's limit
	"Bucket":          {Ref: "BackupBucket", Optional: true, Max: 63},    // S3's limit
	"BuilderGroup":    {Ref: "BuilderGroup", Optional: true, Max: 255},   // Auto Scaling's limit
	"ServicesBoxRole": {Ref: "ServicesBoxRoleArn", Optional: true, Max: 640},
	"KmsKeys":         {Ref: "KmsKeyArns", Optional: true, List: true, Max: 1024},
	"SecretArn":       {Ref: "PassphraseSecretArn", Optional: true, Max: 640},
	"TargetGroups":    {Ref: "TargetGroupArns", Optional: true, List: true, Max: 1024},
	"OpsRole":         {Ref: "OpsRoleArn", Optional: true, Max: 640},
	"SlackSecret":     {Ref: "SlackSecretArn", Max: 640},
	// The name CloudFormation gives the table: the stack's name (at most
	// 128) and the logical ID with a suffix; DynamoDB's limit is 255.
	"Table": {Ref: "StateTable", Max: 255},
}

// IAM's quotas (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html):
// a customer-managed policy is at most 6,144 characters, white space not
// counted, and a role has at most 10 managed policies attached by default
// (20 on request).
const (
	ManagedPolicySize    = 6144
	ManagedPoliciesQuota = 10
)

// otherManagedPolicies is how many managed policies circlebot.in.yaml
// attaches to BotRole itself (HostPolicy).
const otherManagedPolicies = 1

var placeholder = regexp.MustCompile(`\$\{([A-Za-z][A-Za-z0-9]*)\}`)

// Generate makes circlebot.yaml.
func Generate(skeleton, policy, unit []byte) ([]byte, error) {
	stmts, conds, err := policyStatements(policy)
	if err != nil {
		return nil, err
	}
	if bytes.Contains(unit, []byte("${")) {
		return nil, fmt.Errorf("the systemd unit contains \"${\", which Fn::Sub would read as a reference")
	}
	if err := checkMaxLengths(skeleton); err != nil {
		return nil, err
	}
	out := string(skeleton)
	replace := func(marker, with string) error {
		if strings.Count(out, marker) != 1 {
			return fmt.Errorf("circlebot.in.yaml must have the line %s exactly once", marker)
		}
		out = strings.Replace(out, marker, strings.TrimRight(with, "\n"), 1)
		return nil
	}
	policies, err := managedPolicies(split(stmts), conds)
	if err != nil {
		return nil, err
	}
	if err := replace("#POLICIES#", policies); err != nil {
		return nil, err
	}
	var c strings.Builder
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for n := range conds {
			if !yield(n) {
				return
			}
		}
	}) {
		b, err := json.Marshal(conds[name])
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&c, "  %s: %s\n", name, b)
	}
	if err := replace("#CONDITIONS#", c.String()); err != nil {
		return nil, err
	}
	var u strings.Builder
	for _, line := range strings.Split(strings.TrimRight(string(unit), "\n"), "\n") {
		if line == "" {
			u.WriteString("\n")
			continue
		}
		u.WriteString("              " + line + "\n")
	}
	if err := replace("#UNIT#", u.String()); err != nil {
		return nil, err
	}
	header := "# GENERATED by `go generate ./deploy/cloudformation/` from circlebot.in.yaml,\n" +
		"# deploy/iam/policy.json and deploy/systemd/circlebot.service. Do not edit.\n"
	return []byte(header + out), nil
}

type obj = map[string]any

func ref(name string) obj { return obj{"Ref": name} }

// has is the condition that a parameter is not empty.
func has(p Param) obj {
	v := any(ref(p.Ref))
	if p.List {
		v = obj{"Fn::Join": []any{"", ref(p.Ref)}}
	}
	return obj{"Fn::Not": []any{obj{"Fn::Equals": []any{v, ""}}}}
}

func condName(refs []string) string {
	return "Has" + strings.Join(refs, "And")
}

// statement is one statement of policy.json as the template has it.
type statement struct {
	sid string
	// v is the statement, or Fn::If on cond with AWS::NoValue.
	v any
	// cond is the condition that keeps it; empty, it is always there.
	cond string
	// est is the most characters it can have filled in, white space not
	// counted: each placeholder at its Param.Max.
	est int
}

// policyStatements turns policy.json into the template's statements and
// the conditions they use.
func policyStatements(policy []byte) ([]statement, map[string]obj, error) {
	p, err := iam.Parse(policy)
	if err != nil {
		return nil, nil, err
	}
	conds := map[string]obj{}
	for _, prm := range Params {
		if prm.Optional {
			conds[condName([]string{prm.Ref})] = has(prm)
		}
	}
	var stmts []statement
	for _, s := range p.Statement {
		g := &stmtGen{need: map[string]bool{}}
		st := obj{}
		if s.Sid != "" {
			st["Sid"] = s.Sid
		}
		st["Effect"] = s.Effect
		for _, f := range []struct {
			name string
			v    iam.Strings
		}{{"Action", s.Action}, {"NotAction", s.NotAction}, {"Resource", s.Resource}, {"NotResource", s.NotResource}} {
			if f.v.IsZero() {
				continue
			}
			v, err := g.field(f.v)
			if err != nil {
				return nil, nil, fmt.Errorf("statement %s %s: %w", s.Sid, f.name, err)
			}
			st[f.name] = v
		}
		if len(s.Condition) > 0 {
			c := obj{}
			for op, keys := range s.Condition {
				m := obj{}
				for k, vals := range keys {
					if placeholder.MatchString(k) {
						return nil, nil, fmt.Errorf("statement %s: a placeholder in condition key %q", s.Sid, k)
					}
					v, err := g.field(vals)
					if err != nil {
						return nil, nil, fmt.Errorf("statement %s %s %s: %w", s.Sid, op, k, err)
					}
					m[k] = v
				}
				c[op] = m
			}
			st["Condition"] = c
		}
		if g.err != nil {
			return nil, nil, fmt.Errorf("statement %s: %w", s.Sid, g.err)
		}
		est, err := estimate(s)
		if err != nil {
			return nil, nil, err
		}
		if len(g.need) == 0 {
			stmts = append(stmts, statement{sid: s.Sid, v: st, est: est})
			continue
		}
		refs := slices.Sorted(func(yield func(string) bool) {
			for r := range g.need {
				if !yield(r) {
					return
				}
			}
		})
		name := condName(refs)
		if len(refs) > 1 {
			var and []any
			for _, r := range refs {
				and = append(and, obj{"Condition": condName([]string{r})})
			}
			conds[name] = obj{"Fn::And": and}
		}
		stmts = append(stmts, statement{sid: s.Sid, v: obj{"Fn::If": []any{name, st, ref("AWS::NoValue")}}, cond: name, est: est})
	}
	return stmts, conds, nil
}

// estimate is the most characters statement s can have once filled in,
// white space not counted (as IAM counts): its compact JSON with each
// placeholder at its longest value.
func estimate(s iam.Statement) (int, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return 0, err
	}
	n := len(b)
	for _, m := range placeholder.FindAllStringSubmatch(string(b), -1) {
		prm, ok := Params[m[1]]
		if !ok || prm.Max <= 0 {
			return 0, fmt.Errorf("statement %s: placeholder ${%s} has no Max in deploy/cloudformation Params", s.Sid, m[1])
		}
		n += prm.Max - len(m[0])
	}
	return n, nil
}

// docOverhead is {"Version":"2012-10-17","Statement":[]}, compact.
const docOverhead = len(`{"Version":"2012-10-17","Statement":[]}`)

// split packs the statements, in policy.json's order and each whole, into
// as few documents as keep every one within ManagedPolicySize at the
// estimate's longest values.
func split(stmts []statement) [][]statement {
	var docs [][]statement
	size := 0
	for _, st := range stmts {
		if len(docs) == 0 || size+1+st.est > ManagedPolicySize {
			docs = append(docs, nil)
			size = docOverhead - 1 // the first statement has no comma
		}
		docs[len(docs)-1] = append(docs[len(docs)-1], st)
		size += 1 + st.est
	}
	return docs
}

// managedPolicies is the template's BotPolicy1…N: one
// AWS::IAM::ManagedPolicy per document, attached to BotRole. A document
// whose statements all have conditions exists only when one of them holds
// (IAM refuses a policy without statements).
func managedPolicies(docs [][]statement, conds map[string]obj) (string, error) {
	if n := len(docs) + otherManagedPolicies; n > ManagedPoliciesQuota {
		return "", fmt.Errorf("the policy needs %d managed policies, and the role would have %d: over IAM's default quota of %d per role", len(docs), n, ManagedPoliciesQuota)
	}
	var out strings.Builder
	for i, d := range docs {
		name := fmt.Sprintf("BotPolicy%d", i+1)
		var vs []any
		var when []string
		est := docOverhead - 1
		always := false
		for _, st := range d {
			vs = append(vs, st.v)
			est += 1 + st.est
			if st.cond == "" {
				always = true
			} else if !slices.Contains(when, st.cond) {
				when = append(when, st.cond)
			}
		}
		if est > ManagedPolicySize { // a statement alone: split packs the rest within
			return "", fmt.Errorf("statement %s can be %d characters filled in, over IAM's %d for a managed policy: split it in policy.json", d[0].sid, est, ManagedPolicySize)
		}
		fmt.Fprintf(&out, "  # deploy/iam/policy.json, part %d of %d: %s … %s (at most %d characters filled in).\n", i+1, len(docs), d[0].sid, d[len(d)-1].sid, est)
		fmt.Fprintf(&out, "  %s:\n    Type: AWS::IAM::ManagedPolicy\n", name)
		if !always {
			c, err := anyOf(name, when, conds)
			if err != nil {
				return "", err
			}
			fmt.Fprintf(&out, "    Condition: %s\n", c)
		}
		fmt.Fprintf(&out, "    Properties:\n      Description: circlebot, the bot's own calls (deploy/iam/policy.json), part %d of %d\n", i+1, len(docs))
		out.WriteString("      Roles: [{\"Ref\": BotRole}]\n      PolicyDocument:\n")
		var js bytes.Buffer
		enc := json.NewEncoder(&js)
		enc.SetEscapeHTML(false)
		enc.SetIndent("        ", "  ")
		if err := enc.Encode(obj{"Version": "2012-10-17", "Statement": vs}); err != nil {
			return "", err
		}
		out.WriteString("        " + js.String() + "\n")
	}
	return out.String(), nil
}

// anyOf names a condition that holds when any of when does, adding it
// (and the nested Fn::Or it needs past Fn::Or's 10) to conds.
func anyOf(name string, when []string, conds map[string]obj) (string, error) {
	if len(when) == 1 {
		return when[0], nil
	}
	var parts []string
	for i := 0; i < len(when); i += 10 {
		group := when[i:min(i+10, len(when))]
		if len(group) == 1 {
			parts = append(parts, group[0])
			continue
		}
		var or []any
		for _, c := range group {
			or = append(or, obj{"Condition": c})
		}
		n := fmt.Sprintf("%sPart%d", name, i/10+1)
		conds[n] = obj{"Fn::Or": or}
		parts = append(parts, n)
	}
	if len(parts) == 1 {
		conds["Has"+name] = conds[parts[0]]
		delete(conds, parts[0])
		return "Has" + name, nil
	}
	return anyOf(name+"Any", parts, conds)
}

// checkMaxLengths: every String template parameter a placeholder takes
// declares Param.Max as its MaxLength, so the estimate is a bound.
func checkMaxLengths(skeleton []byte) error {
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for n := range Params {
			if !yield(n) {
				return
			}
		}
	}) {
		prm := Params[name]
		if prm.List || strings.HasPrefix(prm.Ref, "AWS::") || prm.Ref == "StateTable" {
			continue
		}
		block := regexp.MustCompile(`(?s)\n  ` + regexp.QuoteMeta(prm.Ref) + `:\n(.*?)\n  [A-Za-z]`).FindSubmatch(skeleton)
		if block == nil {
			return fmt.Errorf("circlebot.in.yaml has no parameter %s", prm.Ref)
		}
		if !bytes.Contains(block[1], fmt.Appendf(nil, "    MaxLength: %d\n", prm.Max)) {
			return fmt.Errorf("circlebot.in.yaml: parameter %s must have MaxLength: %d (its Max in Params, which the policy's split assumes)", prm.Ref, prm.Max)
		}
	}
	return nil
}

type stmtGen struct {
	need map[string]bool // template parameters the statement needs set
	err  error
}

// field renders one Action, Resource or condition value the way
// iam.Render fills it: a whole-string placeholder is its values (none to
// many) and an element without values goes; an embedded one takes its one
// value, and the statement goes without it; a field left with no values
// takes the statement with it.
func (g *stmtGen) field(s iam.Strings) (any, error) {
	var out []any
	var optionalOnly []string // whole-string optional placeholders, when that is all the field has
	allOptional := true
	for _, e := range s.Values {
		m := placeholder.FindStringSubmatch(e)
		whole := m != nil && m[0] == e
		if !whole {
			allOptional = false
		}
		switch {
		case m == nil:
			out = append(out, e)
		case whole:
			prm, ok := Params[m[1]]
			if !ok {
				return nil, fmt.Errorf("placeholder ${%s} has no template parameter (deploy/cloudformation Params)", m[1])
			}
			if !prm.Optional {
				allOptional = false
			}
			if prm.List {
				if len(s.Values) != 1 {
					return nil, fmt.Errorf("list placeholder ${%s} must be the field's only element", m[1])
				}
				g.need[prm.Ref] = true
				return ref(prm.Ref), nil
			}
			if prm.Optional {
				optionalOnly = append(optionalOnly, prm.Ref)
				out = append(out, obj{"Fn::If": []any{condName([]string{prm.Ref}), ref(prm.Ref), ref("AWS::NoValue")}})
			} else {
				out = append(out, ref(prm.Ref))
			}
		default:
			v, err := g.sub(e)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
	}
	if allOptional && len(optionalOnly) > 0 {
		// Nothing is left without them: the statement needs them.
		if len(optionalOnly) > 1 {
			return nil, fmt.Errorf("a field of only optional placeholders %v: say which the statement needs", optionalOnly)
		}
		g.need[optionalOnly[0]] = true
		out = []any{ref(optionalOnly[0])}
	}
	if !s.List && len(out) == 1 {
		return out[0], nil
	}
	return out, nil
}

// sub is Fn::Sub for a string with embedded placeholders.
func (g *stmtGen) sub(e string) (any, error) {
	vars := obj{}
	var err error
	str := placeholder.ReplaceAllStringFunc(e, func(ph string) string {
		name := ph[2 : len(ph)-1]
		prm, ok := Params[name]
		switch {
		case !ok:
			err = fmt.Errorf("placeholder ${%s} has no template parameter (deploy/cloudformation Params)", name)
		case prm.List:
			err = fmt.Errorf("list placeholder ${%s} inside %q", name, e)
		case strings.HasPrefix(prm.Ref, "AWS::"):
			return "${" + prm.Ref + "}"
		default:
			if prm.Optional {
				g.need[prm.Ref] = true
			}
			vars[name] = ref(prm.Ref)
		}
		return ph
	})
	if err != nil {
		return nil, err
	}
	if len(vars) == 0 {
		return obj{"Fn::Sub": str}, nil
	}
	return obj{"Fn::Sub": []any{str, vars}}, nil
}
