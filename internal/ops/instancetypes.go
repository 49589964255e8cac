package ops

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/servicequotas"
	"github.com/aws/smithy-go"
)

// TypeOfferings is where AWS says which instance types a zone offers.
type TypeOfferings interface {
	DescribeInstanceTypeOfferings(context.Context, *ec2.DescribeInstanceTypeOfferingsInput, ...func(*ec2.Options)) (*ec2.DescribeInstanceTypeOfferingsOutput, error)
}

// InstanceTypes reads instance types and where they are offered.
type InstanceTypes interface {
	TypeOfferings
	DescribeInstanceTypes(context.Context, *ec2.DescribeInstanceTypesInput, ...func(*ec2.Options)) (*ec2.DescribeInstanceTypesOutput, error)
}

// Quotas reads one Service Quotas value (the account's vCPU limits).
type Quotas interface {
	GetServiceQuota(context.Context, *servicequotas.GetServiceQuotaInput, ...func(*servicequotas.Options)) (*servicequotas.GetServiceQuotaOutput, error)
}

// TypeInfo is what a resize needs to know of an instance type.
type TypeInfo struct {
	Name      string   `json:"name"`
	Archs     []string `json:"archs"`
	VCPUs     int32    `json:"vcpus"`
	MemoryMiB int64    `json:"memory_mib"`
	// Hypervisor is nitro or xen ("" for bare metal).
	Hypervisor string `json:"hypervisor,omitempty"`
	// ENA is the network adapter: unsupported, supported or required.
	ENA string `json:"ena"`
	// NVMe is how EBS volumes appear: required on Nitro (nvme devices),
	// unsupported on Xen (xvd devices).
	NVMe          string `json:"nvme"`
	InstanceStore bool   `json:"instance_store,omitempty"`
}

func (t TypeInfo) String() string {
	return fmt.Sprintf("%s (%d vCPUs, %s GiB)", t.Name, t.VCPUs, strconv.FormatFloat(float64(t.MemoryMiB)/1024, 'f', -1, 64))
}

func typeInfo(t ec2types.InstanceTypeInfo) TypeInfo {
	i := TypeInfo{Name: string(t.InstanceType), Hypervisor: string(t.Hypervisor), InstanceStore: aws.ToBool(t.InstanceStorageSupported)}
	if t.ProcessorInfo != nil {
		for _, a := range t.ProcessorInfo.SupportedArchitectures {
			i.Archs = append(i.Archs, string(a))
		}
	}
	if t.VCpuInfo != nil {
		i.VCPUs = aws.ToInt32(t.VCpuInfo.DefaultVCpus)
	}
	if t.MemoryInfo != nil {
		i.MemoryMiB = aws.ToInt64(t.MemoryInfo.SizeInMiB)
	}
	if t.NetworkInfo != nil {
		i.ENA = string(t.NetworkInfo.EnaSupport)
	}
	if t.EbsInfo != nil {
		i.NVMe = string(t.EbsInfo.NvmeSupport)
	}
	return i
}

// describeTypes reads the named instance types; a name AWS does not know
// is absent from the answer (a filter, not InstanceTypes, which would fail
// the whole call for one unknown name).
func describeTypes(ctx context.Context, api InstanceTypes, names ...string) (map[string]TypeInfo, error) {
	out := map[string]TypeInfo{}
	in := &ec2.DescribeInstanceTypesInput{Filters: []ec2types.Filter{{Name: aws.String("instance-type"), Values: names}}}
	p := ec2.NewDescribeInstanceTypesPaginator(api, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("describe instance types %s: %w", strings.Join(names, ", "), translate(err))
		}
		for _, t := range page.InstanceTypes {
			i := typeInfo(t)
			out[i.Name] = i
		}
	}
	return out, nil
}

// offeredIn lists which of names the zone offers.
func offeredIn(ctx context.Context, api TypeOfferings, az string, names ...string) ([]string, error) {
	in := &ec2.DescribeInstanceTypeOfferingsInput{
		LocationType: ec2types.LocationTypeAvailabilityZone,
		Filters: []ec2types.Filter{
			{Name: aws.String("location"), Values: []string{az}},
			{Name: aws.String("instance-type"), Values: names},
		},
	}
	var out []string
	p := ec2.NewDescribeInstanceTypeOfferingsPaginator(api, in)
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("read the instance types offered in %s: %w", az, translate(err))
		}
		for _, o := range page.InstanceTypeOfferings {
			out = append(out, string(o.InstanceType))
		}
	}
	return out, nil
}

// sizeRank orders the sizes of one family: nano < … < large < xlarge <
// 2xlarge < … ; ok is false for sizes that are not on that scale (metal,
// metal-24xl), which NextSize never proposes.
func sizeRank(size string) (int, bool) {
	switch size {
	case "nano":
		return 1, true
	case "micro":
		return 2, true
	case "small":
		return 3, true
	case "medium":
		return 4, true
	case "large":
		return 5, true
	case "xlarge":
		return 10, true
	}
	n, ok := strings.CutSuffix(size, "xlarge")
	if !ok {
		return 0, false
	}
	v, err := strconv.Atoi(n)
	if err != nil || v < 2 {
		return 0, false
	}
	return 10 * v, true
}

// largerSizes are the sizes above large that families use.
var largerSizes = []int{2, 3, 4, 6, 8, 9, 10, 12, 16, 18, 24, 32, 48, 56, 96, 112, 224}

// NextSize is the next larger size of typ's family that AWS offers in the
// zone (m5.xlarge → m5.2xlarge, or m5.4xlarge when no 3xlarge exists),
// "" when there is none. It asks for exact names, so it works where
// wildcards in filters do not.
func NextSize(ctx context.Context, api TypeOfferings, typ, az string) (string, error) {
	family, size, ok := strings.Cut(typ, ".")
	rank, known := sizeRank(size)
	if !ok || !known {
		return "", nil
	}
	var candidates []string
	for _, s := range []string{"nano", "micro", "small", "medium", "large", "xlarge"} {
		if r, _ := sizeRank(s); r > rank {
			candidates = append(candidates, family+"."+s)
		}
	}
	for _, n := range largerSizes {
		if 10*n > rank {
			candidates = append(candidates, fmt.Sprintf("%s.%dxlarge", family, n))
		}
	}
	offered, err := offeredIn(ctx, api, az, candidates...)
	if err != nil {
		return "", err
	}
	next, best := "", 0
	for _, o := range offered {
		_, s, _ := strings.Cut(o, ".")
		if r, ok := sizeRank(s); ok && r > rank && (best == 0 || r < best) {
			next, best = o, r
		}
	}
	return next, nil
}

// vcpuQuotas are the Service Quotas codes of EC2's on-demand vCPU limits,
// by the family prefixes they cover (longest first where prefixes
// overlap: inf is not an I family, nor dl a D one).
var vcpuQuotas = []struct {
	prefixes   []string
	code, name string
}{
	{[]string{"inf"}, "L-1945791B", "Running On-Demand Inf instances"},
	{[]string{"dl", "trn", "hpc", "mac", "u-", "u7"}, "", ""}, // own quotas, not read here
	{[]string{"g", "vt"}, "L-DB2E81BA", "Running On-Demand G and VT instances"},
	{[]string{"p"}, "L-417A185B", "Running On-Demand P instances"},
	{[]string{"x"}, "L-7295265B", "Running On-Demand X instances"},
	{[]string{"f"}, "L-74FC7D96", "Running On-Demand F instances"},
	{[]string{"a", "c", "d", "h", "i", "m", "r", "t", "z"}, "L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"},
}

// vcpuQuotaOf is the quota that counts the vCPUs of instance type typ.
func vcpuQuotaOf(typ string) (code, name string) {
	for _, q := range vcpuQuotas {
		if slices.ContainsFunc(q.prefixes, func(p string) bool { return strings.HasPrefix(typ, p) }) {
			return q.code, q.name
		}
	}
	return "", ""
}

// checkQuota says what the account's vCPU quota allows for a move from
// one type to another. A quota that cannot be read is said, not refused
// (Service Quotas is missing in some partitions and in moto; its refusal
// at start is handled by going back to the old type). A quota too small
// for even one such instance is refused.
func checkQuota(ctx context.Context, api Quotas, from, to TypeInfo) (string, error) {
	code, name := vcpuQuotaOf(to.Name)
	switch {
	case code == "":
		return fmt.Sprintf("vCPU quota not checked (no quota code is known here for the %s family)", strings.Split(to.Name, ".")[0]), nil
	case api == nil:
		return "vCPU quota not checked (no Service Quotas client)", nil
	}
	out, err := api.GetServiceQuota(ctx, &servicequotas.GetServiceQuotaInput{ServiceCode: aws.String("ec2"), QuotaCode: aws.String(code)})
	if err != nil {
		if ctx.Err() != nil {
			return "", err
		}
		why := said(err)
		if errors.Is(translate(err), ErrUnauthorized) {
			why += "; the bot's policy needs servicequotas:GetServiceQuota"
		}
		return fmt.Sprintf("vCPU quota not checked: Service Quotas could not be read (%s)", why), nil
	}
	if out.Quota == nil || out.Quota.Value == nil {
		return fmt.Sprintf("vCPU quota not checked: Service Quotas gave no value for %s", code), nil
	}
	limit := aws.ToFloat64(out.Quota.Value)
	if float64(to.VCPUs) > limit {
		return "", refusef("%s has %d vCPUs, more than the account's quota %q (%s) allows in all: %s vCPUs. Ask AWS for a higher quota first, or choose a smaller type.",
			to.Name, to.VCPUs, name, code, strconv.FormatFloat(limit, 'f', -1, 64))
	}
	more := to.VCPUs
	if c, _ := vcpuQuotaOf(from.Name); c == code {
		more = to.VCPUs - from.VCPUs
	}
	return fmt.Sprintf("vCPU quota %q (%s) is %s; %s adds %+d vCPUs to what the account runs (the usage is not read: at the limit, the start is refused and the box goes back to %s)",
		name, code, strconv.FormatFloat(limit, 'f', -1, 64), to.Name, more, from.Name), nil
}

// said is what AWS answered, in short ("InsufficientInstanceCapacity: We
// currently do not have…"), without what the bot was doing; anything
// that is not an AWS answer is explained.
func said(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		if m := strings.TrimSuffix(ae.ErrorMessage(), "."); m != "" {
			return ae.ErrorCode() + ": " + m
		}
		return ae.ErrorCode()
	}
	return strings.TrimSuffix(Explain(err), ".")
}
