package ops

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/aws-sdk-go-v2/service/servicequotas"
	sqtypes "github.com/aws/aws-sdk-go-v2/service/servicequotas/types"
	"github.com/aws/smithy-go"
)

// resizeFake adds to fakeEC2 the instance types, where they are offered,
// images, type changes and starts — with what moto cannot do: accept a
// start and then stop the instance for want of capacity, as AWS may.
type resizeFake struct {
	*fakeEC2
	types    map[string]ec2types.InstanceTypeInfo
	offered  map[string][]string // zone → types
	imageENA bool
	// noCapacity is a type whose start AWS accepts, then stops again with
	// Server.InsufficientInstanceCapacity.
	noCapacity string
	offerAsks  [][]string
}

func newResizeFake() *resizeFake {
	t := func(name, hv, ena, nvme string, vcpus int32, archs ...ec2types.ArchitectureType) ec2types.InstanceTypeInfo {
		return ec2types.InstanceTypeInfo{InstanceType: ec2types.InstanceType(name), Hypervisor: ec2types.InstanceTypeHypervisor(hv),
			ProcessorInfo: &ec2types.ProcessorInfo{SupportedArchitectures: archs}, VCpuInfo: &ec2types.VCpuInfo{DefaultVCpus: aws.Int32(vcpus)},
			MemoryInfo:  &ec2types.MemoryInfo{SizeInMiB: aws.Int64(int64(vcpus) * 4096)},
			NetworkInfo: &ec2types.NetworkInfo{EnaSupport: ec2types.EnaSupport(ena)}, EbsInfo: &ec2types.EbsInfo{NvmeSupport: ec2types.EbsNvmeSupport(nvme)}}
	}
	f := &resizeFake{fakeEC2: newFakeEC2(), types: map[string]ec2types.InstanceTypeInfo{}, offered: map[string][]string{}}
	for _, ti := range []ec2types.InstanceTypeInfo{
		t("c4.xlarge", "xen", "unsupported", "unsupported", 4, "x86_64"),
		t("c5.xlarge", "nitro", "required", "required", 4, "x86_64"),
		t("m5.2xlarge", "nitro", "required", "required", 8, "x86_64"),
		t("m5.4xlarge", "nitro", "required", "required", 16, "x86_64"),
		t("m5.8xlarge", "nitro", "required", "required", 32, "x86_64"),
	} {
		f.types[string(ti.InstanceType)] = ti
	}
	f.offered["us-east-1a"] = []string{"c4.xlarge", "c5.xlarge", "m5.2xlarge", "m5.4xlarge", "m5.8xlarge"}
	return f
}

// box adds the Services box: running, type typ, in us-east-1a.
func (f *resizeFake) box(typ string, ena bool) *fakeInstance {
	in := f.addInstance("i-box", ec2types.InstanceStateNameRunning, "circleci_services")
	in.InstanceType = ec2types.InstanceType(typ)
	in.Placement = &ec2types.Placement{AvailabilityZone: aws.String("us-east-1a")}
	in.Architecture = ec2types.ArchitectureValuesX8664
	in.EnaSupport = aws.Bool(ena)
	in.ImageId = aws.String("ami-1")
	in.RootDeviceType = ec2types.DeviceTypeEbs
	in.PrivateIpAddress = aws.String("10.0.1.10")
	return in
}

func (f *resizeFake) DescribeInstanceTypes(_ context.Context, in *ec2.DescribeInstanceTypesInput, _ ...func(*ec2.Options)) (*ec2.DescribeInstanceTypesOutput, error) {
	out := &ec2.DescribeInstanceTypesOutput{}
	for _, flt := range in.Filters {
		for _, v := range flt.Values {
			if ti, ok := f.types[v]; ok {
				out.InstanceTypes = append(out.InstanceTypes, ti)
			}
		}
	}
	return out, nil
}

func (f *resizeFake) DescribeInstanceTypeOfferings(_ context.Context, in *ec2.DescribeInstanceTypeOfferingsInput, _ ...func(*ec2.Options)) (*ec2.DescribeInstanceTypeOfferingsOutput, error) {
	var az string
	var names []string
	for _, flt := range in.Filters {
		switch aws.ToString(flt.Name) {
		case "location":
			az = flt.Values[0]
		case "instance-type":
			names = flt.Values
		}
	}
	f.offerAsks = append(f.offerAsks, names)
	out := &ec2.DescribeInstanceTypeOfferingsOutput{}
	for _, n := range names {
		if slices.Contains(f.offered[az], n) {
			out.InstanceTypeOfferings = append(out.InstanceTypeOfferings, ec2types.InstanceTypeOffering{InstanceType: ec2types.InstanceType(n), Location: aws.String(az)})
		}
	}
	return out, nil
}

func (f *resizeFake) DescribeImages(context.Context, *ec2.DescribeImagesInput, ...func(*ec2.Options)) (*ec2.DescribeImagesOutput, error) {
	return &ec2.DescribeImagesOutput{Images: []ec2types.Image{{ImageId: aws.String("ami-1"), EnaSupport: aws.Bool(f.imageENA)}}}, nil
}

func (f *resizeFake) ModifyInstanceAttribute(_ context.Context, in *ec2.ModifyInstanceAttributeInput, _ ...func(*ec2.Options)) (*ec2.ModifyInstanceAttributeOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	typ := aws.ToString(in.InstanceType.Value)
	f.record("ModifyInstanceAttribute %s %s", aws.ToString(in.InstanceId), typ)
	fi := f.insts[aws.ToString(in.InstanceId)]
	if fi.State.Name != ec2types.InstanceStateNameStopped {
		return nil, apiErr("ModifyInstanceAttribute", "IncorrectInstanceState")
	}
	fi.InstanceType = ec2types.InstanceType(typ)
	return &ec2.ModifyInstanceAttributeOutput{}, nil
}

func (f *resizeFake) StartInstances(_ context.Context, in *ec2.StartInstancesInput, _ ...func(*ec2.Options)) (*ec2.StartInstancesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range in.InstanceIds {
		f.record("StartInstances %s", id)
		fi := f.insts[id]
		fi.State = &ec2types.InstanceState{Name: ec2types.InstanceStateNamePending}
		fi.StateReason = nil
		if string(fi.InstanceType) == f.noCapacity {
			// Accepted, then stopped again: AWS found no capacity.
			fi.next = []ec2types.InstanceStateName{ec2types.InstanceStateNamePending, ec2types.InstanceStateNameStopped}
			fi.StateReason = &ec2types.StateReason{Code: aws.String("Server.InsufficientInstanceCapacity"), Message: aws.String("Server.InsufficientInstanceCapacity: Insufficient capacity.")}
		} else {
			fi.next = []ec2types.InstanceStateName{ec2types.InstanceStateNamePending, ec2types.InstanceStateNameRunning}
		}
	}
	return &ec2.StartInstancesOutput{}, nil
}

type fakeQuotas struct {
	value float64
	err   error
}

func (q fakeQuotas) GetServiceQuota(_ context.Context, in *servicequotas.GetServiceQuotaInput, _ ...func(*servicequotas.Options)) (*servicequotas.GetServiceQuotaOutput, error) {
	if q.err != nil {
		return nil, q.err
	}
	return &servicequotas.GetServiceQuotaOutput{Quota: &sqtypes.ServiceQuota{QuotaCode: in.QuotaCode, Value: aws.Float64(q.value)}}, nil
}

func refusal(t *testing.T, err error, wants ...string) {
	t.Helper()
	var r *RefusalError
	if !errors.As(err, &r) {
		t.Fatalf("err = %v, want a refusal", err)
	}
	for _, w := range wants {
		if !strings.Contains(r.Msg, w) {
			t.Errorf("refusal lacks %q: %s", w, r.Msg)
		}
	}
}

// The plan's checks where moto cannot reach: a Xen box without ENA
// support asked onto a Nitro type is refused for ENA; with ENA on its
// image, for NVMe; a type not offered in the box's zone is refused; a
// vCPU quota below the new type is refused; a box that is stopping is
// refused.
func TestResizePlanChecks(t *testing.T) {
	ctx := context.Background()
	t.Run("ENA, then NVMe", func(t *testing.T) {
		f := newResizeFake()
		f.box("c4.xlarge", false)
		r := &Resize{EC2: f, NameTag: "circleci_services", Region: "us-east-1"}
		_, err := r.Plan(ctx, "c5.xlarge")
		refusal(t, err, "requires the ENA network adapter", "ami-1", "--ena-support")
		f.imageENA = true
		_, err = r.Plan(ctx, "c5.xlarge")
		refusal(t, err, "NVMe devices", "c4.xlarge", "/etc/fstab")
	})
	t.Run("not offered in the zone", func(t *testing.T) {
		f := newResizeFake()
		f.box("m5.2xlarge", true)
		f.offered["us-east-1a"] = []string{"m5.2xlarge"}
		_, err := (&Resize{EC2: f, NameTag: "circleci_services"}).Plan(ctx, "m5.4xlarge")
		refusal(t, err, "m5.4xlarge is not offered in us-east-1a")
	})
	t.Run("quota", func(t *testing.T) {
		f := newResizeFake()
		f.box("m5.2xlarge", true)
		_, err := (&Resize{EC2: f, NameTag: "circleci_services", Quotas: fakeQuotas{value: 8}}).Plan(ctx, "m5.4xlarge")
		refusal(t, err, "16 vCPUs", "L-1216C47A", "8 vCPUs")
		p, err := (&Resize{EC2: f, NameTag: "circleci_services", Quotas: fakeQuotas{value: 64}}).Plan(ctx, "m5.4xlarge")
		if err != nil || !strings.Contains(p.Quota, "is 64") || !strings.Contains(p.Quota, "+8 vCPUs") {
			t.Errorf("quota 64: %v, %q", err, p.Quota)
		}
		p, err = (&Resize{EC2: f, NameTag: "circleci_services", Quotas: fakeQuotas{err: &smithy.GenericAPIError{Code: "AccessDeniedException", Message: "no"}}}).Plan(ctx, "m5.4xlarge")
		if err != nil || !strings.Contains(p.Quota, "not checked") || !strings.Contains(p.Quota, "servicequotas:GetServiceQuota") {
			t.Errorf("quota unreadable: %v, %q", err, p.Quota)
		}
		if p.Checked[0] != "m5.4xlarge (16 vCPUs, 64 GiB) exists and is offered in us-east-1a" {
			t.Errorf("checked: %q", p.Checked)
		}
	})
	t.Run("box stopping", func(t *testing.T) {
		f := newResizeFake()
		f.box("m5.2xlarge", true).State.Name = ec2types.InstanceStateNameStopping
		_, err := (&Resize{EC2: f, NameTag: "circleci_services"}).Plan(ctx, "m5.4xlarge")
		refusal(t, err, "is stopping")
	})
}

// AWS may accept a start and stop the instance again for want of
// capacity (moto cannot): the box goes back to its old type, is started,
// and the step says so; a resume goes on with the old type.
func TestResizeStartGoesBackWhenAWSStopsTheNewTypeForCapacity(t *testing.T) {
	f := newResizeFake()
	f.box("m5.2xlarge", true)
	f.noCapacity = "m5.4xlarge"
	r := &Resize{EC2: f, NameTag: "circleci_services", Pace: func() time.Duration { return time.Millisecond }}
	ctx := context.Background()
	p, err := r.Plan(ctx, "m5.4xlarge")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	if _, err := r.stop(ctx, p, rec); err != nil {
		t.Fatal(err)
	}
	if _, err := r.setType(ctx, "i-box", "m5.4xlarge"); err != nil {
		t.Fatal(err)
	}
	res := ResizeResult{}
	d, err := r.start(ctx, &Work[ResizeResult]{ID: "op-1", Result: &res}, p, rec)
	if err != nil {
		t.Fatal(err)
	}
	if !res.RolledBack || !strings.Contains(res.Why, "InsufficientInstanceCapacity") || !strings.Contains(d, "set back to m5.2xlarge") {
		t.Errorf("result %+v, detail %q", res, d)
	}
	if in := f.insts["i-box"]; in.InstanceType != "m5.2xlarge" || in.State.Name != ec2types.InstanceStateNameRunning {
		t.Errorf("box is %s, %s", in.InstanceType, in.State.Name)
	}
	wantCalls(t, f.fakeEC2, "StopInstances i-box", "ModifyInstanceAttribute i-box m5.4xlarge", "StartInstances i-box", "ModifyInstanceAttribute i-box m5.2xlarge", "StartInstances i-box")
	if !rec.has("Setting `i-box` back to m5.2xlarge") {
		t.Errorf("the rollback was not said: %q", rec.lines)
	}
	// Run again (a resume): nothing more is sent, the old type stays.
	if _, err := r.start(ctx, &Work[ResizeResult]{ID: "op-1", Result: &res}, p, rec); err != nil {
		t.Fatal(err)
	}
	if n := f.count("StartInstances"); n != 2 {
		t.Errorf("%d starts after the step ran again, want 2", n)
	}
}

// The next size is the smallest larger one of the family that the zone
// offers, asked for by exact names; none, or a size off the scale, is "".
func TestNextSize(t *testing.T) {
	f := newResizeFake()
	ctx := context.Background()
	for typ, want := range map[string]string{"m5.2xlarge": "m5.4xlarge", "m5.4xlarge": "m5.8xlarge", "m5.8xlarge": "", "m5.metal": "", "c5.large": "c5.xlarge", "bogus": ""} {
		got, err := NextSize(ctx, f, typ, "us-east-1a")
		if err != nil || got != want {
			t.Errorf("NextSize(%s) = %q, %v; want %q", typ, got, err, want)
		}
	}
	for _, asked := range f.offerAsks {
		for _, n := range asked {
			if strings.Contains(n, "*") {
				t.Errorf("asked with a wildcard: %s", n)
			}
		}
	}
}

func TestSizeRankAndQuotaCodes(t *testing.T) {
	order := []string{"nano", "micro", "small", "medium", "large", "xlarge", "2xlarge", "3xlarge", "4xlarge", "12xlarge", "48xlarge"}
	last := 0
	for _, s := range order {
		r, ok := sizeRank(s)
		if !ok || r <= last {
			t.Errorf("sizeRank(%s) = %d, %v after %d", s, r, ok, last)
		}
		last = r
	}
	for _, s := range []string{"metal", "metal-24xl", "1xlarge", "xxlarge"} {
		if _, ok := sizeRank(s); ok {
			t.Errorf("sizeRank(%s) is on the scale", s)
		}
	}
	for typ, want := range map[string]string{
		"m5.xlarge": "L-1216C47A", "t3.micro": "L-1216C47A", "im4gn.large": "L-1216C47A", "inf2.xlarge": "L-1945791B",
		"g5.xlarge": "L-DB2E81BA", "vt1.3xlarge": "L-DB2E81BA", "p4d.24xlarge": "L-417A185B", "x2idn.16xlarge": "L-7295265B",
		"f1.2xlarge": "L-74FC7D96", "dl1.24xlarge": "", "trn1.2xlarge": "", "mac1.metal": "", "u-6tb1.metal": "", "hpc6a.48xlarge": "",
	} {
		if got, _ := vcpuQuotaOf(typ); got != want {
			t.Errorf("vcpuQuotaOf(%s) = %q, want %q", typ, got, want)
		}
	}
}

// The boot check passes only on a box that booted after the reboot was
// asked for (give or take the clocks' skew), and says when it booted.
func TestBootScript(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "proc"), 0o755); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	for _, tc := range []struct {
		boot time.Time
		code int
	}{
		{sent.Add(-time.Hour), rebootedExit},
		{sent.Add(-2 * bootSkew), rebootedExit},
		{sent.Add(-bootSkew / 2), 0},
		{sent.Add(20 * time.Second), 0},
	} {
		stat := "cpu  1 2 3\nbtime " + strconv.FormatInt(tc.boot.Unix(), 10) + "\n"
		if err := os.WriteFile(filepath.Join(root, "proc", "stat"), []byte(stat), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("bash", "-c", "set -euo pipefail\n"+bootScript(sent))
		cmd.Env = append(os.Environ(), "BOX_ROOT="+root)
		out, err := cmd.Output()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.code || field(string(out), "boot") != strconv.FormatInt(tc.boot.Unix(), 10) {
			t.Errorf("boot %s before the reboot: exit %d, output %q; want exit %d", sent.Sub(tc.boot), code, out, tc.code)
		}
	}
}
