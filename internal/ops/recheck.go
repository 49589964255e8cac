package ops

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// InstanceState reads one instance's state now. An instance AWS no longer
// lists is "gone". A filter rather than InstanceIds: an unknown ID is then
// an empty answer, not an error to tell from a real one.
func InstanceState(ctx context.Context, api EC2, id string) (string, error) {
	out, err := api.DescribeInstances(ctx, &ec2.DescribeInstancesInput{
		Filters: []ec2types.Filter{{Name: aws.String("instance-id"), Values: []string{id}}},
	})
	if err != nil {
		return "", fmt.Errorf("read instance %s: %w", id, err)
	}
	for _, r := range out.Reservations {
		for _, in := range r.Instances {
			if in.State != nil {
				return string(in.State.Name), nil
			}
		}
	}
	return "gone", nil
}

// Changed says how an instance differs from what a plan was approved
// with ("" when it does not): the first thing a resume checks.
func Changed(ctx context.Context, api EC2, what, id, approved string) (string, error) {
	now, err := InstanceState(ctx, api, id)
	if err != nil {
		return "", err
	}
	if now == approved {
		return "", nil
	}
	return fmt.Sprintf("%s `%s` was %s when this was approved; it is %s now", what, id, approved, now), nil
}
